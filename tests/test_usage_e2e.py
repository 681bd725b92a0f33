"""Usage and quotas end to end (#16): the tokens the model reports (or their estimate) are
kept per person, room and day, ``!usage`` shows them, ``[limits]`` stops a turn before the
model is asked, and the figures outlive a restart. The real daemon, the fake Talk and the
scripted model; the day is the clock's day in ``[chat] timezone``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.clock import ManualClock
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import ADMIN_ROOM, GROUP, create_event, dm_event, running_daemon
from tests.test_ops_e2e import metrics, value

BERLIN = ZoneInfo("Europe/Berlin")
EVENING = datetime(2026, 5, 4, 21, 15, tzinfo=BERLIN)  # 2 h 45 min before midnight
RESET = "00:00 (Europe/Berlin), in 2 h 45 min"
OVER = (
    "Sorry, you have used your {limit} tokens for today, so I can't answer until your quota"
    f" resets at {RESET}."
)


def limits(**values: Any) -> dict[str, Any]:
    return {"chat": {"timezone": "Europe/Berlin"}, "limits": values}


def used(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


def evening() -> ManualClock:
    return ManualClock(EVENING.timestamp())


async def test_n08_the_models_usage_is_kept_and_usage_shows_it(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, limits(tokens_per_day=10_000), evening()) as d:
        llm.calls([("current_time", {"timezone": "UTC"}, None)], usage=used(300, 20))
        llm.reply("It is late.", usage=used(350, 30))
        assert await d.say(dm_event("what time is it?")) == ["It is late."]
        [own] = await d.say(dm_event("!usage"))
        [of_alice] = await d.say(create_event("!usage alice", sender="root", room=ADMIN_ROOM))
        [day] = await d.say(create_event("!usage", sender="root", room=ADMIN_ROOM))
        [refused] = await d.say(dm_event("!usage root"))
    assert own == "\n".join(
        [
            "**Your usage today** (2026-05-04, Europe/Berlin)",
            "- tokens: 700 (prompt 650, completion 50) in 1 turn",
            f"- limit: 10000 tokens a day, 9300 left; it resets at {RESET}",
        ]
    )
    assert of_alice.splitlines()[:2] == [
        "**Usage of alice today** (2026-05-04, Europe/Berlin)",
        "- tokens: 700 (prompt 650, completion 50) in 1 turn",
    ]
    assert "- alice: 700 tokens in 1 turn" in day.splitlines()
    assert "- dmroom01: 700 tokens in 1 turn" in day.splitlines()
    assert refused == (
        "You can see only your own usage here; admins see anyone's with `!usage UID` in the"
        " admin room."
    )


async def test_n08_a_server_without_usage_gets_an_estimate_marked_as_such(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, limits(), evening()) as daemon:
        llm.reply("Hello there, Alice!", usage=None)  # 18 characters: 5 tokens
        await daemon.say(dm_event("hi"))
        [text] = await daemon.say(dm_event("!usage"))
    sent = llm.requests[0].body  # what the daemon sent, as the server received it
    chars = sum(len(json.dumps(sent[key], ensure_ascii=False)) for key in ("messages", "tools"))
    prompt = -(-chars // 4)
    assert f"- tokens: {prompt + 5} (prompt {prompt}, completion 5) in 1 turn" in text
    assert "- some of these figures are estimated" in text


async def test_n07_a_person_over_their_quota_is_told_when_it_resets_and_the_model_is_not_asked(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = evening()
    async with running_daemon(tmp_path, talk, llm, limits(tokens_per_day=1000), clock) as daemon:
        llm.reply("A long answer.", usage=used(900, 200))
        assert await daemon.say(dm_event("tell me everything")) == ["A long answer."]
        assert await daemon.say(dm_event("and more?")) == [OVER.format(limit=1000)]
        assert len(llm.requests) == 1  # only the first turn reached the model
        assert await daemon.say(dm_event("hello", sender="bob", other="alice")) == ["ok"]
        clock.set(datetime(2026, 5, 5, 0, 1, tzinfo=BERLIN))
        assert await daemon.say(dm_event("good morning")) == ["ok"]  # a new day
    assert len(llm.requests) == 3


async def test_n07_a_room_over_its_quota_answers_nobody_there_until_it_resets(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, limits(tokens_per_room_day=500), evening()) as d:
        llm.reply("Sure.", usage=used(450, 100))
        assert await d.say(create_event("talkbot summarise", sender="alice")) == ["Sure."]
        [text] = await d.say(create_event("talkbot and for me?", sender="bob"))
        assert text == (
            "Sorry, this room has used its 500 tokens for today, so I can't answer here until"
            f" the quota resets at {RESET}."
        )
        assert len(llm.requests) == 1
        assert await d.say(dm_event("hi", sender="bob", other="alice")) == ["ok"]  # elsewhere
        [own] = await d.say(create_event("!usage", sender="bob"))
    assert "- this room today: 550 of its 500 tokens" in own.splitlines()


async def test_n07_admins_are_exempt_and_a_roles_own_limit_overrides_the_default(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = limits(tokens_per_day=100, roles={"guest": {"tokens_per_day": 50_000}})
    config["access"] = {"admins": ["root"], "admin_room": ADMIN_ROOM, "guest_role": "guest"}
    async with running_daemon(tmp_path, talk, llm, config, evening()) as daemon:
        llm.usage = used(400, 100)  # every answer: over the default limit at once
        for sender in ("root", "guests/visitor", "alice"):
            first = await daemon.say(dm_event("hi", sender=sender))
            second = await daemon.say(dm_event("again", sender=sender))
            assert first == ["ok"]
            assert second == (["ok"] if sender != "alice" else [OVER.format(limit=100)])
        [own] = await daemon.say(dm_event("!usage", sender="root"))
    assert "- limit: none (admins are exempt)" in own.splitlines()
    assert len(llm.requests) == 5


async def test_n07_admins_are_limited_once_their_role_has_a_limit(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = limits(roles={"admin": {"tokens_per_day": 300}})
    async with running_daemon(tmp_path, talk, llm, config, evening()) as daemon:
        llm.usage = used(250, 60)
        assert await daemon.say(dm_event("hi", sender="root")) == ["ok"]
        assert await daemon.say(dm_event("again", sender="root")) == [OVER.format(limit=300)]
    assert len(llm.requests) == 1


async def test_n07_an_over_quota_owners_prompt_job_is_skipped_with_a_notice(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = evening()
    async with running_daemon(tmp_path, talk, llm, limits(tokens_per_day=1000), clock) as daemon:
        llm.calls([("schedule_add", {"every": "1h", "prompt": "Summarise the day"}, None)])
        llm.reply("Scheduled.", usage=used(900, 150))
        await daemon.say(create_event("talkbot summarise hourly", sender="bob"))
        [job] = await daemon.runtime.running.scheduler.jobs()
        clock.advance(3600)
        outcomes = await daemon.runtime.running.scheduler.run_due()
        audit = await daemon.runtime.running.store.recent_audit()
    assert outcomes == {job.id: "skipped"}
    assert len(llm.requests) == 2  # the chat turn's two rounds; the job asked nothing
    assert talk.texts(GROUP)[-1] == (
        f"Scheduled job `{job.id}` did not run: its owner's daily quota of 1000 tokens is used"
        " up. It resets at 00:00 (Europe/Berlin), in 1 h 45 min."
    )
    assert (audit[-1].action, audit[-1].outcome) == ("schedule.run", "skipped")
    assert "quota" in audit[-1].detail


async def test_n08_the_figures_and_the_quota_survive_a_restart(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = evening()
    async with running_daemon(tmp_path, talk, llm, limits(tokens_per_day=1000), clock) as daemon:
        llm.reply("Done.", usage=used(1000, 100))
        await daemon.say(dm_event("work hard"))
    async with running_daemon(tmp_path, talk, llm, limits(tokens_per_day=1000), clock) as daemon:
        [text] = await daemon.say(dm_event("!usage"))
        refused = await daemon.say(dm_event("more, please"))
    assert "- tokens: 1100 (prompt 1000, completion 100) in 1 turn" in text.splitlines()
    assert "- limit: 1000 tokens a day, 0 left" in text
    assert refused == [OVER.format(limit=1000)]
    assert len(llm.requests) == 1


async def test_n08_metrics_count_tokens_and_turns_by_role(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, limits(tokens_per_day=100), evening()) as d:
        llm.reply("Hi", usage=used(120, 8))
        await d.say(dm_event("hi"))
        await d.say(dm_event("hi again"))  # over the quota: no model, no tokens
        llm.reply("Hi root", usage=used(30, 2))
        await d.say(dm_event("hi", sender="root"))
        samples = await metrics(d)
    assert value(samples, "talkbot_tokens_total", role="user", kind="prompt") == 120
    assert value(samples, "talkbot_tokens_total", role="user", kind="completion") == 8
    assert value(samples, "talkbot_tokens_total", role="admin", kind="prompt") == 30
    assert value(samples, "talkbot_turns_total", outcome="reply", role="user") == 1
    assert value(samples, "talkbot_turns_total", outcome="over_quota", role="user") == 1
    assert value(samples, "talkbot_turns_total", outcome="reply", role="admin") == 1


async def test_usage_shows_a_cost_estimate_only_when_prices_are_set(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    priced = limits(price_per_1k_prompt=0.5, price_per_1k_completion=1.5, currency="EUR")
    async with running_daemon(tmp_path, talk, llm, priced, evening()) as daemon:
        llm.reply("Hi", usage=used(3000, 1000))
        await daemon.say(dm_event("hi"))
        [text] = await daemon.say(dm_event("!usage"))
    assert "- cost: about 3.00 EUR" in text.splitlines()  # 3 x 0.5 + 1 x 1.5
    async with running_daemon(tmp_path, talk, llm, limits(), evening()) as daemon:
        [unpriced] = await daemon.say(dm_event("!usage"))
    assert "cost" not in unpriced
