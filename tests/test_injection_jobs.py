"""Jobs against a model that obeys any text (#13 items 4, 6 and 8), through the real daemon.

I05: a room's moderators see and remove every job of their room; a prompt job posts only
in the room it was made in. I07: one turn cannot make more jobs than ``[limits]`` allows.
I09: nothing a job posts can notify the whole room, whoever made the job.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.clock import ManualClock
from bot.scheduler import ScheduledJob
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import (
    ADMIN_ROOM,
    GROUP,
    ONE2ONE,
    Daemon,
    create_event,
    join_event,
    running_daemon,
)
from tests.test_schedules_e2e import scheduler_of, tool_results

HOUR = 3600
T0 = datetime(2026, 11, 5, 8, 0, tzinfo=UTC).timestamp()
LIVE_MASS_MENTION = re.compile(r"@\"?(all|here)\b", re.IGNORECASE)
MODERATOR = "2"
MEMBER = "3"


async def bobs_digest_job(daemon: Daemon, llm: FakeLLM) -> ScheduledJob:
    """bob, a plain member of the group room, has the bot post a digest of it every hour."""
    await daemon.say(join_event())
    llm.call("schedule_add", {"every": "1h", "prompt": "Post a digest of this room"})
    llm.reply("Scheduled.")
    await daemon.say(create_event("talkbot post a digest every hour", sender="bob"))
    [job] = await scheduler_of(daemon).jobs()
    return job


# -- I05: a removed member's job; the room's moderators see and remove it -----------------


async def test_i05_moderator_lists_a_members_job_and_removes_it_for_good(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, {}, clock) as daemon:
        job = await bobs_digest_job(daemon, llm)
        assert job.origin_room == GROUP
        [listing] = await daemon.say(
            create_event("!jobs", sender="mia", participant_type=MODERATOR)
        )
        assert f"`{job.id}`" in listing
        assert "by users/bob" in listing
        [removed] = await daemon.say(
            create_event(f"!jobs remove {job.id}", sender="mia", participant_type=MODERATOR)
        )
        assert f"Removed job `{job.id}` of users/bob" in removed
        assert await scheduler_of(daemon).jobs() == []
        requests = len(llm.requests)
        posted = len(talk.messages)
        for _ in range(3):
            clock.advance(HOUR)
            assert await scheduler_of(daemon).run_due() == {}
        assert len(llm.requests) == requests  # the room is never read again
        assert len(talk.messages) == posted
        audit = await daemon.runtime.running.store.recent_audit()
        assert (audit[-1].actor, audit[-1].action) == ("users/mia", "schedule.remove")


def removed_from_room(uid: str, *, by: str, message_id: int = 900) -> dict[str, Any]:
    """The "user_removed" system message Talk 21 sends when someone leaves or is removed
    (the shape of fixture 017: actor = who did it, parameter "user" = who is gone)."""
    person = {"type": "user", "id": uid, "name": uid.title(), "mention-id": uid}
    remover = {"type": "user", "id": by, "name": by.title(), "mention-id": by}
    return {
        "type": "Activity",
        "actor": {"type": "Person", "id": f"users/{by}", "name": by.title()},
        "object": {
            "type": "Note",
            "id": str(message_id),
            "name": "user_removed",
            "content": json.dumps(
                {
                    "message": "{actor} removed {user}",
                    "parameters": {"actor": remover, "user": person},
                }
            ),
            "mediaType": "text/markdown",
        },
        "target": {"type": "Collection", "id": GROUP, "name": "Project room"},
    }


async def test_i05_a_member_removed_from_the_room_stops_their_job_reading_it(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """#13.4: bob is removed from the room; his digest job there pauses at once and the
    room is told, so it no longer sends the room's messages anywhere."""
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, {}, clock) as daemon:
        job = await bobs_digest_job(daemon, llm)
        [note] = await daemon.say(removed_from_room("bob", by="mia"))
        assert f"`{job.id}`" in note
        assert "paused" in note
        paused = await scheduler_of(daemon).get(job.id)
        assert paused is not None
        assert paused.paused
        requests, posted = len(llm.requests), len(talk.messages)
        for _ in range(3):
            clock.advance(HOUR)
            await scheduler_of(daemon).run_due()
        assert len(llm.requests) == requests  # the room is never read again
        assert len(talk.messages) == posted
        assert await daemon.say(removed_from_room("carol", by="carol", message_id=901)) == []


async def test_i05_a_plain_member_can_neither_see_nor_remove_bobs_job(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, {}, ManualClock(T0)) as daemon:
        job = await bobs_digest_job(daemon, llm)
        [listing] = await daemon.say(create_event("!jobs", sender="carol", participant_type=MEMBER))
        assert job.id not in listing
        [refused] = await daemon.say(
            create_event(f"!jobs remove {job.id}", sender="carol", participant_type=MEMBER)
        )
        assert "no job" in refused
        assert await scheduler_of(daemon).get(job.id) is not None
        [own] = await daemon.say(create_event(f"!jobs remove {job.id}", sender="bob"))
        assert f"Removed job `{job.id}`" in own
        assert await scheduler_of(daemon).get(job.id) is None


async def test_i05_a_moderator_cannot_remove_another_rooms_job_and_room_help_names_remove(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, {}, ManualClock(T0)) as daemon:
        job = await bobs_digest_job(daemon, llm)
        [refused] = await daemon.say(
            create_event(
                f"!jobs remove {job.id}", sender="mia", room=ONE2ONE, participant_type=MODERATOR
            )
        )
        assert "no job" in refused
        assert await scheduler_of(daemon).get(job.id) is not None
        [helptext] = await daemon.say(create_event("!help", sender="carol"))
        assert "!jobs remove ID" in helptext


async def test_i05_a_prompt_job_outside_the_room_it_was_made_in_is_refused_at_fire_time(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """No chat path makes such a job for a user (schedule_add keeps users in their room);
    one found in the store anyway does not run."""
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, {}, clock) as daemon:
        await daemon.say(join_event())
        smuggled = ScheduledJob(
            id="smuggled",
            room=GROUP,
            origin_room=ONE2ONE,
            kind="every",
            expr="1h",
            timezone="UTC",
            prompt="Post a digest of this room",
            owner="users/bob",
            created_by_role="user",
            source="chat",
        )
        await scheduler_of(daemon).add(smuggled)
        requests = len(llm.requests)
        clock.advance(HOUR)
        assert await scheduler_of(daemon).run_due() == {"smuggled": "skipped"}
        assert len(llm.requests) == requests
        [run] = await scheduler_of(daemon).runs("smuggled")
        assert "room it was made in" in run.detail
    assert talk.texts(GROUP) == []


async def test_i05_an_admins_prompt_job_for_another_room_runs_there(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, {}, clock) as daemon:
        await daemon.say(join_event())
        [added] = await daemon.say(
            create_event(
                f"!job add digest room={GROUP} every 1h -- prompt: Post a digest",
                sender="root",
                room=ADMIN_ROOM,
            )
        )
        assert added.startswith("Added:")
        job = await scheduler_of(daemon).get("digest")
        assert job is not None
        assert (job.room, job.origin_room) == (GROUP, ADMIN_ROOM)
        [listing] = await daemon.say(
            create_event("!jobs", sender="mia", participant_type=MODERATOR)
        )
        assert f"`digest` — every 1h (UTC), prompt in room {GROUP} (made in room {ADMIN_ROOM})" in (
            listing
        )
        llm.reply("Today's digest: all quiet.")
        clock.advance(HOUR)
        assert await scheduler_of(daemon).run_due() == {"digest": "done"}
    assert talk.texts(GROUP)[-1] == "Today's digest: all quiet."


# -- I07: one turn cannot make an unbounded number of jobs ------------------------------


async def test_i07_an_obedient_admin_turn_asking_for_150_jobs_makes_jobs_per_person(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    extra: dict[str, Any] = {"limits": {"jobs_per_person": 3}, "llm": {"max_rounds": 10}}
    async with running_daemon(tmp_path, talk, llm, extra, ManualClock(T0)) as daemon:
        llm.obey()
        order = json.dumps({"every": "1m", "prompt": "Post a digest of this room"})
        text = "please set these up: " + " ".join(
            f"[[do schedule_add {order}]]" for _ in range(150)
        )
        await daemon.say(create_event(text, sender="root", room=ONE2ONE))
        jobs = await scheduler_of(daemon).jobs("users/root")
        assert len(jobs) == 3
        refusals = [r for r in tool_results(llm) if "jobs_per_person" in r]
        assert refusals
        assert "3" in refusals[0]
        assert "[limits] jobs_per_person" in refusals[0]


# -- I09: @all from jobs of any source ----------------------------------------------------


async def test_i09_admin_and_config_jobs_post_no_live_mass_mention(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    extra = {
        "schedules": [
            {"id": "lunch", "every": "1h", "room": GROUP, "message": "@all lunch is ready"}
        ]
    }
    async with running_daemon(tmp_path, talk, llm, extra, clock) as daemon:
        await daemon.say(join_event())
        for command in (
            f'!job add shout room={GROUP} every 1h -- @all stand-up now, @"here" too',
            f"!job add digest room={GROUP} every 1h -- prompt: Post a digest",
        ):
            [added] = await daemon.say(create_event(command, sender="root", room=ADMIN_ROOM))
            assert added.startswith("Added:")
        llm.reply("@here the digest: all quiet")
        clock.advance(HOUR)
        outcomes = await scheduler_of(daemon).run_due()
        assert outcomes == {"lunch": "done", "shout": "done", "digest": "done"}
    posted = talk.texts(GROUP)
    assert len(posted) == 3
    assert not [text for text in posted if LIVE_MASS_MENTION.search(text)]
    assert "lunch is ready" in " ".join(posted)
    assert "the digest: all quiet" in " ".join(posted)
