"""Replays stay dropped after the inbox purge and after a clock jump (#14.3, H03).

The inbox rows that make a repeated webhook a no-op are purged after 180 days; a captured
request and its "yes", posted again with fresh randoms (they are signed like any webhook),
must not run anything again. Talk's message ids only grow, so the store keeps, per room,
the highest id it purged: nothing at or below it is accepted twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.clock import ManualClock
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.handlers.test_confirm import code_of
from tests.harness import Daemon, create_event, running_daemon

DAY = 24 * 3600
T0 = 1_790_000_000.0


def said(text: str, message_id: int) -> dict[str, Any]:
    return create_event(text, sender="root", message_id=message_id)


async def write_confirmed(daemon: Daemon, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """root asks for a file_write and says yes: (request, yes), as Talk delivered them."""
    daemon.llm.call("file_write", {"path": "pay.txt", "content": "pay mallory"})
    request = said("talkbot, write the payment file", 700)
    [prompt] = await daemon.say(request)
    yes = said(f"yes {code_of(prompt)}", 701)
    daemon.llm.reply("Written.")
    assert await daemon.say(yes) == ["Written."]
    assert (root / "pay.txt").read_text() == "pay mallory"
    (root / "pay.txt").unlink()
    return request, yes


async def replay(daemon: Daemon, *events: dict[str, Any]) -> list[str]:
    """Post each again (a fresh random each time, as an attacker would) and see what comes."""
    texts: list[str] = []
    for event in events:
        texts += await daemon.say(event)
    return texts


async def test_h03_a_request_and_its_yes_replayed_after_the_purge_run_nothing(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    root = tmp_path / "files"
    root.mkdir()
    async with running_daemon(tmp_path, talk, llm, clock=clock) as daemon:
        request, yes = await write_confirmed(daemon, root)
        store = daemon.runtime.running.store
        clock.advance(181 * DAY)
        await store.purge()  # what housekeeping runs every few hours
        asked = len(llm.requests)
        assert await replay(daemon, request, yes) == []
        assert len(llm.requests) == asked  # not even a model call
        assert not (root / "pay.txt").exists()
        assert await store.list_open_pending() == []
        llm.reply("Still here.")
        assert await daemon.say(said("talkbot, are you there?", 702)) == ["Still here."]


async def test_h03_a_forward_clock_jump_that_purges_everything_drops_replays_too(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    root = tmp_path / "files"
    root.mkdir()
    async with running_daemon(tmp_path, talk, llm, clock=clock) as daemon:
        request, yes = await write_confirmed(daemon, root)
        store = daemon.runtime.running.store
        clock.advance(10 * 365 * DAY)  # a broken RTC, or NTP after years offline
        await store.purge()
        clock.advance(-10 * 365 * DAY)  # and back: the floor does not depend on the clock
        assert await replay(daemon, request, yes) == []
        assert not (root / "pay.txt").exists()


async def test_h03_the_floor_survives_a_restart_and_is_kept_per_room(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock(T0)
    async with running_daemon(tmp_path, talk, llm, clock=clock) as daemon:
        llm.reply("first")
        assert await daemon.say(said("talkbot, first", 800)) == ["first"]
        clock.advance(181 * DAY)
        await daemon.runtime.running.store.purge()
    async with running_daemon(tmp_path, talk, llm, clock=clock) as daemon:
        assert await daemon.say(said("talkbot, first", 800)) == []
        llm.reply("other room, older id")
        other = create_event("talkbot, hello", sender="root", room="otherroom1", message_id=799)
        assert await daemon.say(other) == ["other room, older id"]
