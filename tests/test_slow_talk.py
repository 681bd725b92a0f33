"""A reply post held by Nextcloud's brute-force throttle is stored once (T01), end to end."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.talk_server import FakeTalk
from tests.harness import Daemon, dm_event

pytestmark = pytest.mark.timing  # races a wall-clock deadline: run alone (scripts/check)

# What the throttle holds at most is 25 s; the real Nextcloud 31 stored the message after it.
THROTTLE_S = 26.0


async def wait_for_empty_inbox(daemon: Daemon, deadline_s: float) -> None:
    """Until every accepted event is done or failed; AssertionError after the deadline."""
    store = daemon.runtime.running.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while await store.inbox_backlog():
        assert loop.time() < deadline, f"the turn was not finished within {deadline_s}s"
        await asyncio.sleep(0.1)


async def test_t01_reply_held_26_s_by_the_throttle_is_posted_exactly_once(
    daemon: Daemon, talk: FakeTalk
) -> None:
    talk.throttle_next(THROTTLE_S)
    daemon.llm.reply("The build is green.")

    assert await daemon.post(dm_event("how is the build?", message_id=77)) == 200
    await wait_for_empty_inbox(daemon, deadline_s=THROTTLE_S + 30)
    await talk.wait_settled(timeout=THROTTLE_S + 10)  # a post still held would store later

    assert talk.texts() == ["The build is green."]
    assert [m.reply_to for m in talk.messages] == [77]
    assert [(r.path.rsplit("/", 1)[-1], r.abandoned) for r in talk.requests] == [
        ("message", False)  # the daemon waited for Talk's answer
    ]
    assert daemon.runtime.running.talk.failures == 0  # and counts the reply as delivered


async def test_t02_a_room_whose_bot_was_just_enabled_is_answered_again(
    daemon: Daemon, talk: FakeTalk
) -> None:
    """A 401 is remembered so the bot stops feeding the throttle, but a signed webhook from
    that room proves the bot is enabled there now: the next answer is posted at once."""
    talk.set_rooms([])  # the bot is not enabled in the room: Talk answers 401
    daemon.llm.reply("first answer")
    assert await daemon.say(dm_event("hello?", message_id=80)) == []
    assert [r.status for r in talk.requests] == [401]

    talk.set_rooms(None)  # an admin runs occ talk:bot:setup for the room
    daemon.llm.reply("second answer")
    assert await daemon.say(dm_event("hello again?", message_id=81)) == ["second answer"]
