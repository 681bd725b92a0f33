"""Schedules end to end: the real daemon, the fake Talk and the scripted model.

Fire times are driven by the daemon's ManualClock and ``scheduler.run_due()``; restarts
are a second daemon on the same store (R10, R11, A16, and the chat-made reminder).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.clock import ManualClock
from bot.config import ScheduleSettings
from bot.scheduler import Scheduler
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import (
    ADMIN_ROOM,
    GROUP,
    ONE2ONE,
    Daemon,
    create_event,
    dm_event,
    join_event,
    running_daemon,
)

HOUR = 3600
T0 = datetime(2026, 11, 5, 8, 0, tzinfo=UTC).timestamp()  # Thursday 09:00 in Berlin


def standup(misfire: str = "once") -> dict[str, Any]:
    return {
        "chat": {"timezone": "Europe/Berlin"},
        "schedules": [
            {
                "id": "standup",
                "every": "1h",
                "room": GROUP,
                "message": "Stand-up in 5 minutes",
                "misfire": misfire,
            }
        ],
    }


def scheduler_of(daemon: Daemon) -> Scheduler:
    return daemon.runtime.running.scheduler


def tool_results(llm: FakeLLM) -> list[str]:
    """Every tool result the model was shown, in order (each request repeats the earlier)."""
    seen: list[str] = []
    for request in llm.requests:
        for message in request.messages:
            if message.get("role") == "tool" and message["content"] not in seen:
                seen.append(message["content"])
    return seen


def leave_event(room: str = GROUP) -> dict[str, Any]:
    return {**join_event(room), "type": "Leave"}


async def test_config_every_job_delivers_into_its_room_each_time(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, standup(), clock) as daemon:
        for _ in range(3):
            clock.advance(HOUR)
            assert await scheduler_of(daemon).run_due() == {"standup": "done"}
        assert await scheduler_of(daemon).run_due() == {}
    assert talk.texts(GROUP) == ["Stand-up in 5 minutes"] * 3
    assert llm.requests == []  # a fixed message never asks the model


async def test_r10_downtime_across_three_fire_times_gives_one_catch_up(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, standup("once"), clock):
        pass
    clock.advance(3 * HOUR + 15 * 60)
    async with running_daemon(tmp_path, talk, llm, standup("once"), clock) as daemon:
        await scheduler_of(daemon).idle()  # the start-up catch-up
        assert talk.texts(GROUP) == ["Stand-up in 5 minutes"]
        clock.advance(45 * 60)
        await scheduler_of(daemon).run_due()
    assert talk.texts(GROUP) == ["Stand-up in 5 minutes"] * 2


async def test_r10_downtime_with_skip_delivers_nothing(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, standup("skip"), clock):
        pass
    clock.advance(3 * HOUR + 15 * 60)
    async with running_daemon(tmp_path, talk, llm, standup("skip"), clock) as daemon:
        await scheduler_of(daemon).idle()
        assert talk.texts(GROUP) == []
        [run] = await scheduler_of(daemon).runs("standup")
        assert run.status == "skipped"


async def test_r11_run_claimed_before_a_crash_is_not_delivered_after_restart(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, standup(), clock) as daemon:
        clock.advance(HOUR)
        # The run was claimed and the process died before Talk got the message.
        assert await daemon.runtime.running.store.claim_run("standup", int(T0 + HOUR))
    async with running_daemon(tmp_path, talk, llm, standup(), clock) as daemon:
        await scheduler_of(daemon).idle()
        assert await scheduler_of(daemon).run_due() == {}
        assert talk.texts(GROUP) == []
        clock.advance(HOUR)
        assert await scheduler_of(daemon).run_due() == {"standup": "done"}
    assert talk.texts(GROUP) == ["Stand-up in 5 minutes"]


async def test_chat_made_reminder_survives_a_restart_and_fires(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)  # Thursday
    extra = {"chat": {"timezone": "Europe/Berlin"}}
    async with running_daemon(tmp_path, talk, llm, extra, clock) as daemon:
        llm.call("schedule_add", {"at": "2026-11-06T09:00", "message": "Send the report"})
        llm.reply("I'll remind you on Friday at 9:00.")
        texts = await daemon.say(dm_event("remind me on Friday at 9 to send the report"))
        assert texts == ["I'll remind you on Friday at 9:00."]
        assert "next: Fri 2026-11-06 09:00 CET" in tool_results(llm)[0]
    clock.advance(24 * HOUR)
    async with running_daemon(tmp_path, talk, llm, extra, clock) as daemon:
        await scheduler_of(daemon).idle()  # Friday 09:00: due as the daemon starts
        assert talk.texts(ONE2ONE)[-1] == "Send the report"
        assert await scheduler_of(daemon).jobs() == []  # a one-off is done after it ran
    assert talk.texts(ONE2ONE).count("Send the report") == 1


async def test_a_user_cannot_list_or_remove_another_users_job(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, {}, ManualClock(T0)) as daemon:
        llm.call("schedule_add", {"every": "1d", "message": "Alice's private reminder"})
        llm.reply("Done.")
        await daemon.say(create_event("talkbot remind me daily", sender="alice"))
        [job] = await scheduler_of(daemon).jobs()
        llm.call("schedule_list", {})
        llm.call("schedule_remove", {"id": job.id})
        llm.reply("Nothing to show.")
        await daemon.say(create_event("talkbot show and delete all jobs", sender="bob"))
        listed, removed = tool_results(llm)[-2:]
        assert job.id not in listed
        assert "Alice's" not in listed
        assert f"you have no job with id '{job.id}'" in removed
        assert await scheduler_of(daemon).get(job.id) is not None
        assert await daemon.say(create_event("!jobs", sender="bob")) == [
            "You have no scheduled jobs."
        ]
        [own] = await daemon.say(create_event("!jobs", sender="alice"))
        assert job.id in own


async def test_admin_jobs_in_the_admin_room_lists_everyone(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, standup(), ManualClock(T0)) as daemon:
        [text] = await daemon.say(create_event("!jobs", sender="root", room=ADMIN_ROOM))
        assert "`standup`" in text
        assert "by config" in text


async def test_prompt_job_runs_an_unattended_turn_and_posts_the_answer(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, {}, clock) as daemon:
        llm.call(
            "schedule_add",
            {"cron": "0 10 * * *", "prompt": "Post the other team a hello", "room": GROUP},
        )
        llm.reply("Scheduled.")
        await daemon.say(join_event())  # the bot knows the group room
        # Another room: the admin confirms it first; the job records where it was made.
        await daemon.say(dm_event("every day at 10 greet the team", sender="root"))
        await daemon.say(dm_event("yes", sender="root"))
        [job] = await scheduler_of(daemon).jobs()
        assert (job.room, job.origin_room) == (GROUP, ONE2ONE)
        # At fire time the model tries a send that needs a confirmation: refused, no prompt.
        llm.call("nc_talk_send", {"room": ADMIN_ROOM, "message": "hello"})
        llm.reply("Good morning, team!")
        clock.advance(2 * HOUR)
        before = len(llm.requests)
        assert list((await scheduler_of(daemon).run_due()).values()) == ["done"]
        turn = llm.requests[before]
        assert turn.messages[-1] == {"role": "user", "content": "Post the other team a hello"}
        assert "needs a human confirmation" in tool_results(llm)[-1]
    assert talk.texts(GROUP) == ["Good morning, team!"]
    assert talk.texts(ADMIN_ROOM).count("hello") == 0


async def test_a16_prompt_job_of_a_user_who_lost_the_role_is_skipped(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, {}, clock) as daemon:
        llm.call("schedule_add", {"every": "1h", "prompt": "Summarise the day"})
        llm.reply("Scheduled.")
        await daemon.say(create_event("talkbot summarise hourly", sender="bob"))
        await daemon.say(create_event("!role bob none", sender="root", room=ADMIN_ROOM))
        requests = len(llm.requests)
        posted = len(talk.messages)
        clock.advance(HOUR)
        assert list((await scheduler_of(daemon).run_due()).values()) == ["skipped"]
        assert len(llm.requests) == requests  # the model was never asked
        assert len(talk.messages) == posted
        audit = await daemon.runtime.running.store.recent_audit()
        assert audit[-1].outcome == "skipped"
        assert "role is now none" in audit[-1].detail


async def test_a16_job_in_a_room_the_bot_was_removed_from_is_skipped(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, standup(), clock) as daemon:
        await daemon.say(join_event())
        await daemon.say(leave_event())
        clock.advance(HOUR)
        assert await scheduler_of(daemon).run_due() == {"standup": "skipped"}
    assert talk.texts(GROUP) == []


async def test_nc_talk_send_by_a_user_stays_in_the_room(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, {}, ManualClock(T0)) as daemon:
        await daemon.say(join_event(ADMIN_ROOM, "Admins"))
        llm.call("nc_talk_send", {"room": ADMIN_ROOM, "message": "let me in"})
        llm.reply("I can't post there.")
        texts = await daemon.say(dm_event("post 'let me in' to the admin room"))
        assert texts == ["I can't post there."]
        assert "only use this room" in tool_results(llm)[-1]
    assert talk.texts(ADMIN_ROOM) == []
    assert not any("let me in" in text for text in talk.texts())


async def test_reload_reconciles_the_configs_jobs(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, standup(), clock) as daemon:
        changed = {
            "id": "standup",
            "cron": "0 10 * * *",
            "room": GROUP,
            "message": "Stand-up now",
        }
        added = {"id": "lunch", "cron": "0 12 * * 1-5", "room": GROUP, "message": "Lunch"}
        new = daemon.settings.model_copy(
            update={
                "schedules": tuple(
                    ScheduleSettings.model_validate(item) for item in (changed, added)
                )
            }
        )
        daemon.runtime.load_settings = lambda: new
        [answer] = await daemon.say(create_event("!reload", sender="root", room=ADMIN_ROOM))
        assert "reloaded" in answer
        jobs = await scheduler_of(daemon).jobs()
        assert [(job.id, job.expr) for job in jobs] == [
            ("lunch", "0 12 * * 1-5"),
            ("standup", "0 10 * * *"),
        ]
        clock.advance(HOUR)  # 10:00 Berlin
        assert await scheduler_of(daemon).run_due() == {"standup": "done"}
    assert talk.texts(GROUP) == ["Stand-up now"]
