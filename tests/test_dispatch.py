"""The dispatcher: per-room order, rooms in parallel, resume, failures, overflow, stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.dispatch import MAX_ATTEMPTS, Dispatcher
from bot.routing import Route, RouteKind, Triage
from bot.store import InboxItem, Store
from bot.talk.events import Event, parse_event
from tests.harness import create_event, php_json


@pytest.fixture
async def store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Store]:
    opened = Store.open(tmp_path / "db.sqlite3", clock)
    yield opened
    await opened.close()


async def add(store: Store, room: str, n: int) -> InboxItem:
    event_id = await store.accept_event(
        room=room,
        kind="Create",
        body=f'{{"n":{n}}}'.encode(),
        random=f"{room}-{n}".ljust(64),
        dedupe_key=f"{room}:{n}",
    )
    assert event_id is not None
    return InboxItem(
        id=event_id,
        room=room,
        kind="Create",
        body=f'{{"n":{n}}}'.encode(),
        received_at=0,
        attempts=0,
    )


async def test_r06_order_within_a_room_and_parallel_rooms(store: Store, clock: ManualClock) -> None:
    seen: dict[str, list[int]] = {}
    running = 0
    peak = 0

    async def handle(item: InboxItem) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        seen.setdefault(item.room, []).append(item.id)
        running -= 1

    dispatcher = Dispatcher(store, handle, clock=clock, concurrency=8)
    await dispatcher.start()
    items = [await add(store, f"room{r}", i) for i in range(5) for r in range(4)]
    for item in items:
        dispatcher.submit(item)
    await dispatcher.wait_idle()
    for room, ids in seen.items():
        assert ids == sorted(ids), room
    assert sum(len(v) for v in seen.values()) == 20
    assert peak > 1
    assert await store.open_events() == []


async def test_global_cap_limits_concurrent_handling(store: Store, clock: ManualClock) -> None:
    running = 0
    peak = 0

    async def handle(_item: InboxItem) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    dispatcher = Dispatcher(store, handle, clock=clock, concurrency=2)
    await dispatcher.start()
    for r in range(6):
        dispatcher.submit(await add(store, f"room{r}", 0))
    await dispatcher.wait_idle()
    assert peak == 2


async def test_start_resumes_what_a_previous_process_accepted(
    store: Store, clock: ManualClock
) -> None:
    await add(store, "r", 1)
    second = await add(store, "r", 2)
    await store.start_event(second.id)  # was running when the process died
    handled: list[int] = []

    async def handle(item: InboxItem) -> None:
        handled.append(item.id)

    dispatcher = Dispatcher(store, handle, clock=clock)
    await dispatcher.start()
    await dispatcher.wait_idle()
    assert handled == [second.id - 1, second.id]


async def test_an_event_interrupted_too_often_is_given_up(store: Store, clock: ManualClock) -> None:
    item = await add(store, "r", 1)
    for _ in range(MAX_ATTEMPTS):
        await store.start_event(item.id)

    async def handle(_item: InboxItem) -> None:
        raise AssertionError("must not run again")

    await Dispatcher(store, handle, clock=clock).start()
    assert await store.event_status(item.id) == "failed"


async def test_r09_an_event_given_up_still_gets_its_apology(
    store: Store, clock: ManualClock
) -> None:
    item = await add(store, "r", 1)
    for _ in range(MAX_ATTEMPTS):
        await store.start_event(item.id)
    told: list[int] = []

    async def handle(_item: InboxItem) -> None:
        raise AssertionError("must not run again")

    async def on_failure(failed: InboxItem) -> None:
        told.append(failed.id)

    dispatcher = Dispatcher(store, handle, clock=clock, on_failure=on_failure)
    await dispatcher.start()
    await dispatcher.wait_idle()
    assert told == [item.id]
    assert await store.event_status(item.id) == "failed"


async def test_handler_bug_marks_failed_and_apologises(store: Store, clock: ManualClock) -> None:
    apologies: list[int] = []

    async def handle(_item: InboxItem) -> None:
        raise RuntimeError("bug")

    async def on_failure(item: InboxItem) -> None:
        apologies.append(item.id)

    dispatcher = Dispatcher(store, handle, clock=clock, on_failure=on_failure)
    await dispatcher.start()
    item = await add(store, "r", 1)
    dispatcher.submit(item)
    await dispatcher.wait_idle()
    assert apologies == [item.id]
    assert await store.event_status(item.id) == "failed"


async def test_r07_overflow_drops_with_one_busy_notice(store: Store, clock: ManualClock) -> None:
    gate = asyncio.Event()
    notices: list[str] = []

    async def handle(_item: InboxItem) -> None:
        await gate.wait()

    async def on_overflow(item: InboxItem) -> None:
        notices.append(item.room)

    dispatcher = Dispatcher(store, handle, clock=clock, room_queue_cap=3, on_overflow=on_overflow)
    await dispatcher.start()
    items = [await add(store, "flood", i) for i in range(10)]
    for item in items:
        dispatcher.submit(item)
    gate.set()
    await dispatcher.wait_idle()
    statuses = [await store.event_status(item.id) for item in items]
    assert statuses.count("done") == 3  # submitted before the worker ran: three queued
    assert statuses.count("dropped") == 7
    assert notices == ["flood"]


async def test_r08_stop_leaves_queued_work_pending_for_the_next_start(
    store: Store, clock: ManualClock
) -> None:
    started = asyncio.Event()

    async def handle(_item: InboxItem) -> None:
        started.set()
        await asyncio.sleep(10)

    dispatcher = Dispatcher(store, handle, clock=clock)
    await dispatcher.start()
    first, second = await add(store, "r", 1), await add(store, "r", 2)
    dispatcher.submit(first)
    dispatcher.submit(second)
    await started.wait()
    await dispatcher.stop(deadline_s=0.05)
    assert [item.id for item in await store.open_events()] == [first.id, second.id]


# -- H02: lanes, caps per room and per person, rotation ----------------------------------

# What the fake triage makes of a message's first word.
KINDS = {"chatter": RouteKind.IGNORE, "yes": RouteKind.CONFIRM, "!help": RouteKind.ROOM_COMMAND}


async def said(store: Store, sender: str, text: str, n: int) -> InboxItem:
    body = php_json(create_event(text, sender=sender, message_id=n))
    event_id = await store.accept_event(
        room="r", kind="Create", body=body, random=f"r-{n}".ljust(64), dedupe_key=f"r:{n}"
    )
    assert event_id is not None
    return InboxItem(id=event_id, room="r", kind="Create", body=body, received_at=0, attempts=0)


async def triage(item: InboxItem, parsed: Event | None = None) -> Triage:
    event = parse_event(item.body) if parsed is None else parsed
    text = event.message.text if event.message else ""
    return Triage(event, "user", Route(KINDS.get(text.split()[0], RouteKind.CHAT)))


class Room:
    """A dispatcher whose first turn blocks until ``release``; records what ran how."""

    def __init__(self, store: Store, clock: ManualClock, **caps: int) -> None:
        self.turns: list[str] = []
        self.at_once: list[str] = []
        self.busy: list[str] = []
        self.first_turn = asyncio.Event()
        self.acted = asyncio.Condition()
        self._gate = asyncio.Event()
        self.dispatcher = Dispatcher(
            store,
            self._turn,
            clock=clock,
            triage=triage,
            act=self._act,
            on_overflow=self._overflow,
            **caps,
        )

    def release(self) -> None:
        self._gate.set()

    async def _turn(self, item: InboxItem) -> None:
        self.first_turn.set()
        await self._gate.wait()
        self.turns.append(_text(item))

    async def _act(self, triaged: Triage) -> None:
        assert triaged.event.message is not None
        async with self.acted:
            self.at_once.append(triaged.event.message.text)
            self.acted.notify_all()

    async def _overflow(self, item: InboxItem) -> None:
        self.busy.append(_text(item))


def _text(item: InboxItem) -> str:
    message = parse_event(item.body).message
    assert message is not None
    return message.text


async def test_h02_ignored_events_are_handled_at_once_and_take_no_place(
    store: Store, clock: ManualClock
) -> None:
    room = Room(store, clock, room_queue_cap=2)
    await room.dispatcher.start()
    room.dispatcher.submit(await said(store, "dave", "talkbot slow", 1))
    await room.first_turn.wait()
    chatter = [await said(store, "carol", f"chatter {n}", 10 + n) for n in range(30)]
    for item in chatter:
        room.dispatcher.submit(item)
    room.dispatcher.submit(await said(store, "bob", "talkbot question", 50))
    async with asyncio.timeout(5), room.acted:  # while dave's turn still runs
        await room.acted.wait_for(lambda: len(room.at_once) == len(chatter))
    assert room.turns == []
    room.release()
    await room.dispatcher.wait_idle()
    assert room.at_once == [f"chatter {n}" for n in range(30)]  # in arrival order
    assert room.turns == ["talkbot slow", "talkbot question"]
    assert room.busy == []
    assert {await store.event_status(item.id) for item in chatter} == {"done"}
    assert room.dispatcher.peak_room_queue == 1


async def test_h02_a_flooding_person_gives_up_their_newest_places_and_waits_their_turn(
    store: Store, clock: ManualClock
) -> None:
    room = Room(store, clock, room_queue_cap=4)
    await room.dispatcher.start()
    room.dispatcher.submit(await said(store, "mallory", "talkbot m0", 1))
    await room.first_turn.wait()
    for n in range(1, 6):  # alone in the room she may use every place: m5 is one too many
        room.dispatcher.submit(await said(store, "mallory", f"talkbot m{n}", 1 + n))
    room.dispatcher.submit(await said(store, "bob", "talkbot b0", 20))
    room.dispatcher.submit(await said(store, "bob", "talkbot b1", 21))
    room.release()
    await room.dispatcher.wait_idle()
    # bob took mallory's two newest places (m4, m3); the two are served in turn.
    assert room.turns == ["talkbot m0", "talkbot m1", "talkbot b0", "talkbot m2", "talkbot b1"]
    assert room.busy == ["talkbot m5"]  # one notice per room and window
    dropped = [await store.event_status(n) for n in range(4, 7)]
    assert dropped == ["dropped"] * 3


async def test_h02_answers_and_commands_are_never_crowded_out_by_chat(
    store: Store, clock: ManualClock
) -> None:
    room = Room(store, clock, room_queue_cap=3)
    await room.dispatcher.start()
    room.dispatcher.submit(await said(store, "dave", "talkbot slow", 1))
    await room.first_turn.wait()
    for n, sender in enumerate(["bob", "carol", "erin", "frank"]):
        room.dispatcher.submit(await said(store, sender, f"talkbot {sender}", 10 + n))
    for n in range(5):  # one person's own commands: bounded by the cap, only theirs dropped
        room.dispatcher.submit(await said(store, "mallory", "!help", 20 + n))
    room.dispatcher.submit(await said(store, "alice", "yes", 30))
    room.release()
    await room.dispatcher.wait_idle()
    assert room.turns.count("talkbot frank") == 0  # the room's three chat places were full
    assert room.turns.count("!help") == 3
    assert "yes" in room.turns
    assert room.busy == ["talkbot frank"]


async def test_h08_only_events_still_to_be_triaged_hold_up_settling_in_their_room(
    store: Store, clock: ManualClock
) -> None:
    """Nothing of a room is settled on arrival while its intake holds an event still to be
    triaged (a `!mode` it would overtake); a chat turn triaged on arrival holds nothing
    up, and the room is free again once the intake has triaged what held it."""
    triaging = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_triage(item: InboxItem, parsed: Event | None = None) -> Triage:
        triaging.set()
        await go_on.wait()
        return await triage(item, parsed)

    room = Room(store, clock)
    room.dispatcher._triage = slow_triage
    await room.dispatcher.start()
    turn = await said(store, "bob", "talkbot question", 1)
    triaged = await triage(turn)
    room.dispatcher.submit(turn, triaged)  # a plain chat turn, triaged by the webhook
    assert room.dispatcher.may_settle_at_once("r")
    room.dispatcher.submit(await said(store, "carol", "chatter 2", 2))
    assert not room.dispatcher.may_settle_at_once("r")
    await triaging.wait()  # taken out of the intake, its triage under way: still held
    assert not room.dispatcher.may_settle_at_once("r")
    assert room.dispatcher.may_settle_at_once("other")
    go_on.set()
    async with asyncio.timeout(5), room.acted:
        await room.acted.wait_for(lambda: room.at_once == ["chatter 2"])
    assert room.dispatcher.may_settle_at_once("r")
    room.release()
    await room.dispatcher.wait_idle()
    assert room.turns == ["talkbot question"]
