"""The dispatcher: per-room order, rooms in parallel, resume, failures, overflow, stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.dispatch import MAX_ATTEMPTS, Dispatcher
from bot.store import InboxItem, Store


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Store:
    return Store.open(tmp_path / "db.sqlite3", clock)


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
