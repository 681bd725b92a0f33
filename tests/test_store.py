"""The store on both backends: inbox durability and dedupe, rooms, history, roles,
confirmations, jobs; SQLite's lock (R12) and a locked or full SQLite store (H04).

Tests taking ``store`` run twice: on SQLite and on a real PostgreSQL (tests/pgserver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Coroutine
from datetime import date
from pathlib import Path
from typing import Any, cast

import pytest

from bot.clock import ManualClock
from bot.config import StorageSettings
from bot.errors import StoreError, StoreUnavailableError
from bot.lifecycle import housekeep
from bot.store import PURGE_CHUNK, HistoryEntry, Store, TokenCount
from bot.store import engine as engine_module
from bot.store.engine import Tx
from bot.store.sqlite import SqliteDriver
from tests.test_store_postgres import action


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened = Store.open(tmp_path / "db.sqlite3", clock)
    else:
        opened = Store.open_postgres(request.getfixturevalue("postgres_url"), None, clock)
    yield opened
    await opened.close()


async def accept(store: Store, random: str, key: str | None = "Create:r1:1") -> int | None:
    return await store.accept_event(
        room="r1", kind="Create", body=b'{"x":1}', random=random, dedupe_key=key
    )


async def test_accepted_event_is_open_until_finished(store: Store) -> None:
    event_id = await accept(store, "a" * 64)
    assert event_id is not None
    [item] = await store.open_events()
    assert (item.id, item.room, item.body) == (event_id, "r1", b'{"x":1}')
    await store.start_event(event_id)
    assert (await store.open_events())[0].attempts == 1  # 'running' is resumed too
    await store.finish_event(event_id)
    assert await store.open_events() == []


async def test_w04_same_random_is_refused(store: Store) -> None:
    assert await accept(store, "r" * 64, key=None) is not None
    assert await accept(store, "r" * 64, key=None) is None


async def test_w05_same_message_with_new_random_is_refused(store: Store) -> None:
    assert await accept(store, "a" * 64) is not None
    assert await accept(store, "b" * 64) is None


async def test_w05_housekeeping_drops_bodies_but_keeps_the_dedupe(
    store: Store, clock: ManualClock
) -> None:
    event_id = await accept(store, "a" * 64)
    assert event_id is not None
    await store.finish_event(event_id)
    clock.advance(30 * 24 * 3600)
    await store.purge()
    assert (await store.get_event(event_id)).body == b""  # type: ignore[union-attr]
    assert await accept(store, "b" * 64) is None  # a replay with a new random: still known
    assert await accept(store, "a" * 64) is None  # the very same request again


async def test_housekeeping_never_touches_open_events(store: Store, clock: ManualClock) -> None:
    event_id = await accept(store, "a" * 64)
    assert event_id is not None
    clock.advance(365 * 24 * 3600)
    await store.purge()
    [item] = await store.open_events()
    assert item.body == b'{"x":1}'


async def test_h03_the_purge_works_in_chunks_and_keeps_every_rooms_floor(
    store: Store, clock: ManualClock
) -> None:
    """More old rows than one chunk (PURGE_CHUNK): all go, in several short commits, and
    each room's replay floor is its highest purged message id."""
    count = 2 * PURGE_CHUNK + 100
    old_ids = []
    for n in range(count):
        room = "r1" if n % 2 else "r2"
        key = f"Create:{room}:{1000 + n}"
        event_id = await store.accept_event(
            room=room, kind="Create", body=b"{}", random=f"{n:064d}", dedupe_key=key
        )
        assert event_id is not None
        old_ids.append(event_id)
        await store.finish_event(event_id)
    open_id = await accept(store, "o" * 64, key="Create:r1:5000")  # still pending: kept
    clock.advance(181 * 24 * 3600)
    await store.purge()
    [kept] = await store.open_events()
    assert kept.id == open_id
    assert [await store.get_event(i) for i in (old_ids[0], old_ids[-1])] == [None, None]
    assert await store.inbox_backlog() == 1
    last = 1000 + count - 1  # the highest id is odd (r1) when count is even
    for room, highest in (("r1", last), ("r2", last - 1)):
        replay = await store.accept_event(
            room=room,
            kind="Create",
            body=b"{}",
            random="z" * 63 + room[-1],
            dedupe_key=f"Create:{room}:{highest}",
            message_id=highest,
        )
        assert replay is None


async def test_h09_housekeeping_reads_the_bodies_it_empties_not_the_months_before(
    store: Store, clock: ManualClock
) -> None:
    """A store of months: the purge finds the bodies that are due through the index of
    the rows that still have one (step 11), never by walking the rows emptied before."""
    day = 24 * 3600
    emptied = 20_000  # finished, 14 days old and more, emptied by earlier purges
    start = clock.now()

    def fill(tx: Tx) -> None:
        tx.executemany(
            "INSERT INTO inbox (room, dedupe_key, kind, body, received_at, status)"
            " VALUES ('r', ?, 'Create', ?, ?, 'done')",
            [(f"Create:r:{n}", "", start + n) for n in range(emptied)]
            + [(f"Create:r:{emptied + n}", "{}", start + emptied + n) for n in range(50)],
        )

    await store._engine.apply(fill)
    clock.advance(emptied + 50 + 14 * day + 1)  # the last 50 bodies are due now
    steps = [0]

    def count_steps() -> int:
        steps[0] += 1
        return 0  # go on

    driver = store._engine.driver
    sqlite = isinstance(driver, SqliteDriver)  # SQLite counts its work (PostgreSQL: behaviour)
    if sqlite:
        db = cast("SqliteDriver", driver)._db
        await store._engine.on_worker(lambda: db.set_progress_handler(count_steps, 100))
    await store.purge()
    if sqlite:
        await store._engine.on_worker(lambda: db.set_progress_handler(None, 100))
        # A walk of the old rows alone takes more than one VM instruction per row.
        assert steps[0] * 100 < emptied
    rows = await store._engine.read("SELECT count(*) AS n FROM inbox WHERE body != ''")
    assert rows[0]["n"] == 0  # every due body went
    assert len(await store._engine.read("SELECT id FROM inbox")) == emptied + 50  # rows stay


async def test_h09_an_event_open_for_months_at_the_front_does_not_stop_the_purge(
    store: Store, clock: ManualClock
) -> None:
    """The purge reads the oldest rows by id and stops at the first one too young to go:
    an event still open (never finished) at the very front is passed over, not taken for
    the end of what is due."""
    stuck = await accept(store, "s" * 64, key="Create:r1:1")
    finished = []
    for n in range(PURGE_CHUNK + 10):
        event_id = await accept(store, f"{n:064d}", key=f"Create:r1:{10 + n}")
        await store.finish_event(event_id)
        finished.append(event_id)
    clock.advance(181 * 24 * 3600)
    young = await accept(store, "y" * 64, key="Create:r1:9000")
    await store.finish_event(young)
    await store.purge()
    assert [item.id for item in await store.open_events()] == [stuck]
    assert [await store.get_event(i) for i in (finished[0], finished[-1])] == [None, None]
    assert await store.event_status(young) == "done"  # too young: kept


async def test_h09_a_row_stamped_in_the_future_does_not_hold_the_purge_back(
    store: Store, clock: ManualClock
) -> None:
    """A clock that jumped a year ahead for one message and was set back (a wrong RTC at
    boot, then NTP): the rows stored after that one still go when their time comes."""
    year = 365 * 24 * 3600
    stored = []
    for n in range(PURGE_CHUNK + 100):
        if n == 10:
            clock.advance(year)
        event_id = await accept(store, f"{n:064d}", key=f"Create:r1:{10 + n}")
        if n == 10:
            clock.advance(-year)
        await store.finish_event(event_id)
        stored.append(event_id)
    clock.advance(200 * 24 * 3600)
    await store.purge()
    left = await store._engine.read("SELECT id FROM inbox ORDER BY id")
    assert [row["id"] for row in left] == [stored[10]]  # only the one from the future


async def test_h09_decided_actions_let_their_paused_turn_go_then_their_row(
    store: Store, clock: ManualClock
) -> None:
    """A decided action's paused turn (the turn's messages) goes 14 days after the last
    change of its status, its row after 180 days; an action still open keeps both."""
    day = 24 * 3600
    turn = '{"messages": ["' + "m" * 5000 + '"]}'

    created = await store.create_pending(
        [action("DONE1", "t-done", state_json=turn), action("OPEN1", "t-open", state_json=turn)]
    )
    assert created is not None
    done, still_open = created
    assert await store.transition_pending(done.id, "pending", "denied", decided_by="alice")
    clock.advance(13 * day)
    await store.purge_pending()
    assert [
        a.state_json
        for a in (await store.get_pending(done.id), await store.get_pending(still_open.id))
        if a
    ] == [turn, turn]
    clock.advance(2 * day)
    await store.purge_pending()
    kept = await store.get_pending(done.id)
    assert kept is not None
    assert (kept.state_json, kept.status) == ("", "denied")  # the row stays, its turn went
    untouched = await store.get_pending(still_open.id)
    assert untouched is not None
    assert untouched.state_json == turn
    clock.advance(170 * day)
    await store.purge_pending()
    assert await store.get_pending(done.id) is None
    assert await store.pending_by_code("DONE1") is None
    assert await store.get_pending(still_open.id) is not None


async def test_h09_a_turn_just_decided_keeps_its_paused_turn_for_its_resume(
    store: Store, clock: ManualClock
) -> None:
    """A turn paused on two calls: one denied 15 days ago, the other done just now and
    its resume not claimed yet. Housekeeping in between keeps the paused turn: the age
    that counts is the turn's last decision, not each action's own."""
    turn = '{"messages": []}'
    created = await store.create_pending(
        [action("PAIR1", "t-pair", state_json=turn), action("PAIR2", "t-pair", state_json=turn)]
    )
    assert created is not None
    first, second = created
    assert await store.transition_pending(first.id, "pending", "denied", decided_by="alice")
    clock.advance(15 * 24 * 3600)
    for before, after in (("pending", "approved"), ("approved", "running"), ("running", "done")):
        assert await store.transition_pending(second.id, before, after)
    await store.purge_pending()
    decided = await store.claim_turn_resume("t-pair")
    assert decided is not None
    assert [one.state_json for one in decided] == [turn, turn]


async def housekept(task: Coroutine[Any, Any, None], store: Store, action_id: int) -> None:
    """Run the housekeeping loop until it has emptied this decided action's paused turn."""
    running = asyncio.create_task(task)
    try:
        async with asyncio.timeout(5):
            while (found := await store.get_pending(action_id)) and found.state_json:  # noqa: ASYNC110 - polls the store
                await asyncio.sleep(0.01)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_h09_housekeeping_runs_both_purges(store: Store, clock: ManualClock) -> None:
    """What the daemon's housekeeping task runs: the inbox's purge and the actions'."""
    created = await store.create_pending([action("HOUSE1")])
    assert created is not None
    [decided] = created
    assert await store.transition_pending(decided.id, "pending", "denied", decided_by="alice")
    event_id = await accept(store, "h" * 64)
    assert event_id is not None
    await store.finish_event(event_id)
    clock.advance(15 * 24 * 3600)
    await housekept(housekeep(store, interval_s=3600), store, decided.id)
    event = await store.get_event(event_id)
    assert event is not None
    assert event.body == b""


async def test_h09_one_housekeeping_step_failing_does_not_hold_up_the_others(
    store: Store, clock: ManualClock
) -> None:
    """Marking stale prompts expired fails (a bug, say): the purge of decided actions
    still runs in the same pass, not six hours later."""
    created = await store.create_pending([action("HOUSE2")])
    assert created is not None
    [decided] = created
    assert await store.transition_pending(decided.id, "pending", "denied", decided_by="alice")
    clock.advance(15 * 24 * 3600)
    tried: list[str] = []

    async def broken() -> int:
        tried.append("expire_stale")
        raise RuntimeError("a bug")

    await housekept(housekeep(store, interval_s=3600, expire_stale=broken), store, decided.id)
    assert tried == ["expire_stale"]


async def test_events_survive_reopening(tmp_path: Path, clock: ManualClock) -> None:
    first = Store.open(tmp_path / "db.sqlite3", clock)
    await first.accept_event(room="r", kind="Create", body=b"{}", random="x" * 64, dedupe_key="k")
    await first.close()
    second = Store.open(tmp_path / "db.sqlite3", clock)
    assert len(await second.open_events()) == 1
    await second.close()


async def test_r12_a_second_process_on_the_same_store_is_refused(
    tmp_path: Path, clock: ManualClock
) -> None:
    first = Store.open(tmp_path / "db.sqlite3", clock)
    with pytest.raises(StoreError, match="in use by another talkbot"):
        Store.open(tmp_path / "db.sqlite3", clock)
    await first.close()
    await Store.open(tmp_path / "db.sqlite3", clock).close()  # free again once closed


async def test_rooms_membership_and_mode(store: Store) -> None:
    await store.record_room("r1", name="Room", one_to_one=False, joined=True)
    await store.set_room_mode("r1", "all")
    await store.record_room("r1", name="Renamed", one_to_one=False)
    room = await store.get_room("r1")
    assert room is not None
    assert (room.name, room.mode, room.joined) == ("Renamed", "all", True)
    await store.record_room("r1", name="Renamed", one_to_one=False, joined=False)
    room = await store.get_room("r1")
    assert room is not None
    assert not room.joined


async def test_history_is_per_room_ordered_and_trimmed(store: Store) -> None:
    for i in range(10):
        await store.add_history("r1", HistoryEntry(role="user", content=f"m{i}"))
    await store.add_history("r2", HistoryEntry(role="user", content="other room"))
    recent = await store.recent_history("r1", 3)
    assert [e.content for e in recent] == ["m7", "m8", "m9"]
    await store.trim_history("r1", keep=2)
    assert [e.content for e in await store.recent_history("r1", 10)] == ["m8", "m9"]
    assert await store.forget_history("r1") == 2
    assert [e.content for e in await store.recent_history("r2", 10)] == ["other room"]


async def test_role_overrides_persist(store: Store) -> None:
    await store.set_role_override("bob", "admin", set_by="users/root")
    overrides = await store.role_overrides()
    assert overrides["bob"].role == "admin"
    assert await store.remove_role_override("bob")
    assert await store.role_overrides() == {}


async def test_audit_rows(store: Store) -> None:
    await store.audit(actor="users/a", room="r1", action="tool.refused", tool="x", outcome="no")
    [row] = await store.recent_audit()
    assert (row.actor, row.action, row.tool) == ("users/a", "tool.refused", "x")


async def test_usage_adds_up_per_person_room_and_day(store: Store) -> None:
    today, tomorrow = date(2026, 5, 4), date(2026, 5, 5)
    await store.record_usage(today, "alice", "r1", TokenCount(100, 10, 1))
    await store.record_usage(today, "alice", "r1", TokenCount(200, 20, 1, estimated=True))
    await store.record_usage(today, "alice", "r2", TokenCount(5, 1, 0))  # a paused turn's part
    await store.record_usage(today, "bob", "r1", TokenCount(1_000_000_000, 2, 1))
    await store.record_usage(tomorrow, "alice", "r1", TokenCount(7, 7, 1))
    assert await store.tokens_of_person(today, "alice") == TokenCount(305, 31, 2, estimated=True)
    assert await store.tokens_of_room(today, "r1") == TokenCount(1_000_000_300, 32, 3, True)
    assert await store.tokens_of_room(today, "r2") == TokenCount(5, 1, 0)
    assert await store.tokens_of_person(tomorrow, "alice") == TokenCount(7, 7, 1)
    assert await store.tokens_of_person(today, "carol") == TokenCount()  # nobody: zeros


async def test_the_days_usage_lists_the_biggest_people_and_rooms_first(store: Store) -> None:
    day = date(2026, 5, 4)
    await store.record_usage(day, "alice", "r1", TokenCount(10, 0, 1))
    await store.record_usage(day, "bob", "r1", TokenCount(50, 5, 1, estimated=True))
    await store.record_usage(day, "bob", "r2", TokenCount(100, 0, 2))
    await store.record_usage(date(2026, 5, 3), "carol", "r3", TokenCount(10**6, 0, 1))
    summary = await store.usage_of_day(day, top=1)
    assert summary.total == TokenCount(160, 5, 4, estimated=True)
    assert summary.people == (("bob", TokenCount(150, 5, 3, estimated=True)),)
    assert summary.rooms == (("r2", TokenCount(100, 0, 2)),)
    assert (await store.usage_of_day(day)).people[1] == ("alice", TokenCount(10, 0, 1))
    empty = await store.usage_of_day(date(2026, 1, 1))
    assert (empty.total, empty.people, empty.rooms) == (TokenCount(), (), ())


async def test_webhooks_accepted_together_share_a_commit_and_still_dedupe(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = Store.open(tmp_path / "db.sqlite3", clock)
    results = await asyncio.gather(
        *(
            store.accept_event(
                room="r",
                kind="Create",
                body=b"{}",
                random=f"rand-{i}",
                dedupe_key=f"Create:r:{i % 5}",
            )
            for i in range(10)
        )
    )
    accepted = [r for r in results if r is not None]
    assert len(accepted) == 5
    assert results[5:] == [None] * 5  # the same messages again, in the same batch
    await store.close()
    reopened = Store.open(tmp_path / "db.sqlite3", clock)  # committed, not just queued
    assert len(await reopened.open_events()) == 5
    await reopened.close()


@pytest.mark.parametrize("level", ["full", "normal"])
def test_r09_the_configured_durability_is_what_sqlite_runs_with(tmp_path: Path, level: str) -> None:
    """[storage] synchronous reaches the connection ("full", the default, syncs each
    commit: an acknowledged webhook survives a power loss)."""
    settings = StorageSettings(path=tmp_path / "db.sqlite3", synchronous=level)
    driver, _upgrade = SqliteDriver.open(
        settings.path, ManualClock(), synchronous=settings.synchronous
    )
    try:
        assert driver.synchronous() == level
    finally:
        driver.close()
    default, _upgrade = SqliteDriver.open(tmp_path / "other.sqlite3", ManualClock())
    try:
        assert default.synchronous() == StorageSettings().synchronous == "full"
    finally:
        default.close()


# -- H04: a locked or full store -----------------------------------------------------


@contextlib.asynccontextmanager
async def hold_write_lock(path: Path) -> AsyncIterator[None]:
    """Another connection holding the store's write lock, like `sqlite3 FILE 'BEGIN
    EXCLUSIVE;'` left open in a shell; released on leaving."""
    other = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(other.execute, "BEGIN EXCLUSIVE")
        yield
        await asyncio.to_thread(other.execute, "ROLLBACK")
    finally:
        other.close()


class LoopLag:
    """The longest the event loop took to come back to a task sleeping 5 ms at a time."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - before - 0.005)


async def wait_until_healthy(store: Store) -> None:
    """Until the store's probe finds it can commit again (within 5 s)."""
    back = asyncio.Event()
    store.watch_health(lambda health: back.set() if health.ok else None)
    if not store.health.ok:
        await asyncio.wait_for(back.wait(), 5)


async def test_h04_a_locked_store_never_blocks_the_loop_and_writes_wait_for_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "db.sqlite3"
    store = Store.open(path, clock)
    event_id = await accept(store, "a" * 64)
    assert event_id is not None
    loop = asyncio.get_running_loop()
    async with LoopLag() as lag, hold_write_lock(path):
        started = loop.time()
        with pytest.raises(StoreUnavailableError, match="locked"):
            await accept(store, "b" * 64, key="Create:r1:2")
        assert loop.time() - started < 3.0  # the intake budget (2 s), not forever
        assert not store.health.ok
        assert "locked" in store.health.reason
        finish = asyncio.create_task(store.finish_event(event_id))  # not a webhook: it waits
        await asyncio.sleep(0.6)
        assert not finish.done()
        started = loop.time()
        with pytest.raises(StoreUnavailableError):  # known down: one attempt, no budget
            await accept(store, "c" * 64, key="Create:r1:3")
        assert loop.time() - started < 1.0
        assert await store.event_status(event_id) == "pending"  # reads still work
    assert lag.worst < 0.1  # never blocked by a busy wait (it was 5 s per write)
    await asyncio.wait_for(finish, 5)
    assert await store.event_status(event_id) == "done"
    await wait_until_healthy(store)
    assert await accept(store, "d" * 64, key="Create:r1:4") is not None
    await store.close()


async def test_h04_a_full_disk_fails_writes_until_space_returns(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = Store.open(tmp_path / "db.sqlite3", clock)
    event_id = await accept(store, "a" * 64)
    assert event_id is not None
    await store.limit_growth_for_tests(0)
    big = b'{"x":"' + b"y" * 20000 + b'"}'  # needs new pages, like a long message
    with pytest.raises(StoreUnavailableError, match="full"):
        await store.accept_event(
            room="r1", kind="Create", body=big, random="b" * 64, dedupe_key="Create:r1:2"
        )
    assert "full" in store.health.reason
    history = asyncio.create_task(
        store.add_history("r1", HistoryEntry(role="user", content="z" * 20000))
    )
    await asyncio.sleep(0.6)
    assert not history.done()
    assert not store.health.ok
    await store.limit_growth_for_tests(None)  # space returns
    await asyncio.wait_for(history, 5)
    await wait_until_healthy(store)
    assert [e.content for e in await store.recent_history("r1", 5)] == ["z" * 20000]
    assert [item.id for item in await store.open_events()] == [event_id]
    await store.close()


async def test_reads_of_one_tick_share_a_trip_and_fail_alone(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads asked for together run together on the store's thread (#19); one that fails
    fails its own caller only."""
    trips: list[int] = []
    run_reads = engine_module._run_reads

    def counted(driver: object, queries: list[object]) -> list[object]:
        trips.append(len(queries))
        return run_reads(driver, queries)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_module, "_run_reads", counted)
    engine = store._engine
    good = [engine.read("SELECT ? AS n", (n,)) for n in range(20)]
    bad = engine.read("SELECT * FROM no_such_table")
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert trips == [21]
    assert [rows[0]["n"] for rows in results[:20]] == list(range(20))  # type: ignore[index]
    assert isinstance(results[20], StoreError)
    assert "cannot read the store" in str(results[20])
