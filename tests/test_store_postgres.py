"""The PostgreSQL store (P): what replicas sharing one database rely on, its schema
upgrade, its outage and its password. The behaviour both backends share is tested on
both in tests/test_store.py."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import structlog

from bot.clock import ManualClock
from bot.errors import StoreError, StoreUnavailableError, StoreVersionError
from bot.store import JobRecord, NewPendingAction, ReplicaRecord, Store
from bot.store.inbox import INTAKE_BUDGET_S
from bot.store.postgres import PostgresDriver, describe
from bot.store.postgres_baseline import POSTGRES_BASELINE
from bot.store.steps import MIGRATIONS, Migration
from tests.pgserver import PostgresServer


@pytest.fixture
async def replicas(postgres_url: str, clock: ManualClock) -> AsyncIterator[list[Store]]:
    """Two stores on one database, as two talkbot replicas have them."""
    stores = [Store.open_postgres(postgres_url, None, clock) for _ in range(2)]
    yield stores
    for store in stores:
        await store.close()


def action(code: str, turn: str = "t1", *, state_json: str = "{}") -> NewPendingAction:
    """A pending action of turn ``turn``; ``state_json`` is its paused turn."""
    return NewPendingAction(
        code=code,
        turn_id=turn,
        call_id="c1",
        room="r1",
        requester="users/alice",
        requester_name="alice",
        tool="file_write",
        args_json="{}",
        args_hash="h",
        approver="requester",
        state_json=state_json,
        after_message_id="1",
        expires_at=10_000.0,
    )


async def test_p01_a_webhook_that_reaches_two_replicas_is_stored_once(
    replicas: list[Store],
) -> None:
    first, second = replicas
    results = await asyncio.gather(
        *(
            store.accept_event(
                room="r1",
                kind="Create",
                body=b"{}",
                random=f"random-{n}",
                dedupe_key="Create:r1:7",
                message_id=7,
            )
            for n, store in enumerate((first, second, first, second))
        )
    )
    assert len([r for r in results if r is not None]) == 1
    assert len(await first.open_events()) == len(await second.open_events()) == 1


async def test_p02_two_yes_on_two_replicas_approve_the_action_once(
    replicas: list[Store],
) -> None:
    first, second = replicas
    created = await first.create_pending([action("ABCD")])
    assert created is not None
    [pending] = created
    assert await second.create_pending([action("ABCD", turn="t2")]) is None  # code is open
    for _ in range(20):  # many rounds: each a race between the two replicas
        approved = await asyncio.gather(
            first.transition_pending(pending.id, "pending", "approved", decided_by="a"),
            second.transition_pending(pending.id, "pending", "approved", decided_by="b"),
        )
        assert sorted(approved) == [False, True]
        assert await first.transition_pending(pending.id, "approved", "pending")
    assert await first.transition_pending(pending.id, "pending", "denied")
    # Resuming the turn the action belonged to: one replica does it, the other sees None.
    resumed = await asyncio.gather(first.claim_turn_resume("t1"), second.claim_turn_resume("t1"))
    assert sorted(r is None for r in resumed) == [False, True]


async def test_p03_a_fire_time_claimed_on_two_replicas_runs_once(replicas: list[Store]) -> None:
    first, second = replicas
    job = JobRecord(
        id="digest",
        owner="users/alice",
        room="r1",
        kind="every",
        expr="1h",
        timezone="UTC",
        message="hi",
        prompt=None,
        created_by_role="user",
        paused=False,
        misfire="once",
        source="chat",
        created_at=0.0,
        active_since=0.0,
    )
    await first.save_job(job)
    assert await second.get_job("digest") == job
    for fire_time in range(3600, 3600 * 30, 3600):
        claims = await asyncio.gather(
            first.claim_run("digest", fire_time), second.claim_run("digest", fire_time)
        )
        assert sorted(claims) == [False, True]
    assert len(await second.job_runs("digest", limit=100)) == 29


async def test_p04_postgres_down_writes_wait_webhooks_get_refused_and_it_recovers(
    private_postgres_server: PostgresServer, clock: ManualClock
) -> None:
    server = private_postgres_server
    store = Store.open_postgres(server.create_database("talkbot"), None, clock)
    health: list[bool] = []
    store.watch_health(lambda h: health.append(h.ok))
    try:
        await store.record_room("r1", name="Room", one_to_one=False)
        server.kill()
        waiting = asyncio.create_task(store.set_room_mode("r1", "all"))  # no budget: waits
        with pytest.raises(StoreUnavailableError):
            await store.accept_event(
                room="r1", kind="Create", body=b"{}", random="x", dedupe_key="Create:r1:1"
            )
        assert health == [False]
        assert not waiting.done()
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(waiting, 15)
        for _ in range(100):
            if store.health.ok:
                break
            await asyncio.sleep(0.1)
        assert health == [False, True]
        room = await store.get_room("r1")
        assert room is not None
        assert room.mode == "all"  # the write that waited did commit
        accepted = await store.accept_event(
            room="r1", kind="Create", body=b"{}", random="x", dedupe_key="Create:r1:1"
        )
        assert accepted is not None  # the refused webhook was not stored
    finally:
        await store.close()


async def test_p05_replicas_starting_together_migrate_once(
    postgres_url: str, clock: ManualClock
) -> None:
    # Each opens its own connection in its own thread; the advisory lock serialises them.
    errors: list[BaseException] = []
    drivers: list[PostgresDriver] = []

    def open_one() -> None:
        try:
            drivers.append(PostgresDriver.open(postgres_url, None)[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for driver in drivers:
        driver.close()
    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM talkbot_schema").fetchall() == [(len(MIGRATIONS),)]


async def test_p05_a_newer_schema_is_refused_and_a_failed_step_changes_nothing(
    postgres_url: str, clock: ManualClock
) -> None:
    await Store.open_postgres(postgres_url, None, clock).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE talkbot_schema SET version = 99")
    with pytest.raises(StoreVersionError, match="schema version 99, newer than"):
        Store.open_postgres(postgres_url, None, clock)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE talkbot_schema SET version = %s", (len(MIGRATIONS),))
    broken = Migration(
        "a step that fails half-way",
        ("SELECT 1",),
        postgres=("CREATE TABLE added_by_broken_step (x INTEGER)", "SELECT * FROM nowhere"),
    )
    with pytest.raises(StoreError, match=r"step \d+ \(a step that fails half-way\) failed"):
        PostgresDriver.open(postgres_url, None, (*MIGRATIONS, broken))
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('added_by_broken_step')").fetchone() == (None,)
        assert conn.execute("SELECT version FROM talkbot_schema").fetchone() == (len(MIGRATIONS),)


async def test_p05_a_database_of_something_else_is_refused(
    postgres_url: str, clock: ManualClock
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE inbox (id INTEGER)")
    with pytest.raises(StoreVersionError, match="not a talkbot store"):
        Store.open_postgres(postgres_url, None, clock)


async def test_p06_the_password_works_from_the_url_or_the_file_and_is_never_shown(
    postgres_server: PostgresServer, clock: ManualClock
) -> None:
    password = "pw-Kestrel-5521"
    postgres_server.create_role("talkbot_p06", password)
    postgres_server.create_database("p06", owner="talkbot_p06")
    try:
        bare = postgres_server.url("p06", user="talkbot_p06")
        with_password = postgres_server.url("p06", user="talkbot_p06", password=password)
        for url, given in ((bare, password), (with_password, None)):
            store = Store.open_postgres(url, given, clock)
            await store.record_room("r1", name="Room", one_to_one=False)
            await store.close()
        wrong = postgres_server.url("p06", user="talkbot_p06", password=password + "x")
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(StoreError) as refused:
                Store.open_postgres(wrong, None, clock)
            with pytest.raises(StoreError) as refused_too:
                Store.open_postgres(bare, password + "x", clock)
        for error in (refused.value, refused_too.value):
            assert "password authentication failed" in str(error)
            assert password not in str(error)
            assert "127.0.0.1" in str(error)  # it says where
        assert password not in repr(logs)
    finally:
        postgres_server.drop_database("p06")
        postgres_server.drop_role("talkbot_p06")


async def test_a_nul_in_text_is_kept_as_a_replacement_character(
    postgres_url: str, clock: ManualClock
) -> None:
    store = Store.open_postgres(postgres_url, None, clock)
    try:
        await store.record_room("r1", name="a\x00b", one_to_one=False)
        room = await store.get_room("r1")
        assert room is not None
        assert room.name == "a\ufffdb"
    finally:
        await store.close()


def test_p05_every_step_after_the_baseline_has_postgres_statements() -> None:
    missing = [
        index + 1
        for index, step in enumerate(MIGRATIONS)
        if index + 1 > POSTGRES_BASELINE and not step.postgres
    ]
    assert missing == []


async def test_p05_both_backends_build_the_same_tables_and_columns(
    postgres_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    await Store.open(tmp_path / "fresh.sqlite3", clock).close()
    await Store.open_postgres(postgres_url, None, clock).close()
    with sqlite3.connect(tmp_path / "fresh.sqlite3") as lite:
        tables = [
            row[0]
            for row in lite.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        sqlite_shape = {
            table: sorted(c[1] for c in lite.execute(f"PRAGMA table_info({table})"))
            for table in tables
        }
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name != 'talkbot_schema'"
        ).fetchall()
    postgres_shape: dict[str, list[str]] = {}
    for table, column in rows:
        postgres_shape.setdefault(table, []).append(column)
    assert {t: sorted(c) for t, c in postgres_shape.items()} == sqlite_shape


async def test_p06_check_reports_the_store_without_changing_it_or_showing_the_password(
    postgres_server: PostgresServer, postgres_url: str, clock: ManualClock
) -> None:
    assert describe(postgres_url, None).endswith("reachable, empty (serve creates the schema)")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('inbox')").fetchone() == (None,)  # unchanged
    await Store.open_postgres(postgres_url, None, clock).close()
    assert describe(postgres_url, None).endswith(f"schema version {len(MIGRATIONS)} (current)")
    secret = "pw-Osprey-7730"
    wrong = postgres_server.url(postgres_url.rsplit("/", 1)[1], user="nobody_here", password=secret)
    report = describe(wrong, None)
    assert "cannot use it" in report
    assert secret not in report


async def test_p07_a_room_lease_is_one_replicas_until_it_lapses_or_is_handed_back(
    replicas: list[Store], clock: ManualClock
) -> None:
    first, second = replicas
    a = ReplicaRecord("a", "host-a", 1, "0.1.0", clock.now(), clock.now())
    b = ReplicaRecord("b", "host-b", 2, "0.1.0", clock.now(), clock.now())
    await first.accept_event(room="r1", kind="Create", body=b"{}", random="x", dedupe_key="k1")
    assert await first.rooms_to_serve("a") == await second.rooms_to_serve("b") == ["r1"]
    assert await first.claim_room("r1", "a", 15)
    assert not await second.claim_room("r1", "b", 15)
    assert await second.rooms_to_serve("b") == []  # held by a live replica
    clock.advance(10)
    await first.heartbeat(a, 15)  # renews a's lease to now + 15
    clock.advance(10)
    assert not await second.claim_room("r1", "b", 15)
    clock.advance(6)  # a stopped beating: the lease lapsed
    assert await second.rooms_to_serve("b") == ["r1"]
    assert await second.claim_room("r1", "b", 15)
    await first.heartbeat(a, 15)  # a's beat does not take it back
    assert (await first.room_holders())["r1"][0] == "b"
    await second.heartbeat(b, 15)
    await second.leave("b")  # a clean stop hands it back at once
    assert await first.claim_room("r1", "a", 15)
    assert [r.id for r in await first.list_replicas()] == ["a"]
    clock.advance(2 * 24 * 3600)
    await second.heartbeat(b, 15)  # a beat forgets replicas gone for a day
    assert [r.id for r in await first.list_replicas()] == ["b"]


async def test_p04_a_hung_server_refuses_webhooks_within_their_budget_and_recovers(
    private_postgres_server: PostgresServer, clock: ManualClock
) -> None:
    server = private_postgres_server
    store = Store.open_postgres(server.create_database("talkbot"), None, clock)
    try:
        await store.record_room("r1", name="Room", one_to_one=False)
        server.pause()  # SIGSTOP: connections stay open, nothing answers
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreUnavailableError, match="no commit within"):
            await store.accept_event(
                room="r1", kind="Create", body=b"{}", random="x", dedupe_key="Create:r1:1"
            )
        assert loop.time() - started < INTAKE_BUDGET_S + 1.5  # not the 30 s statement limit
        assert not store.health.ok
        with pytest.raises(StoreUnavailableError):  # known down: one short attempt only
            await store.accept_event(
                room="r1", kind="Create", body=b"{}", random="y", dedupe_key="Create:r1:2"
            )
        assert loop.time() - started < INTAKE_BUDGET_S + 3.0
        server.resume()
        for _ in range(200):
            if store.health.ok:
                break
            await asyncio.sleep(0.05)
        assert store.health.ok
    finally:
        server.resume()
        await store.close()


async def test_p07_a_claim_on_a_held_room_waits_for_no_lock_and_leaves_the_store_healthy(
    replicas: list[Store], postgres_url: str, clock: ManualClock
) -> None:
    first, second = replicas
    assert await first.claim_room("r1", "a", 15)
    with psycopg.connect(postgres_url) as holder:  # a's heartbeat, its commit slow to come
        holder.execute("UPDATE room_leases SET expires_at = expires_at + 1 WHERE holder = 'a'")
        started = asyncio.get_running_loop().time()
        assert not await second.claim_room("r1", "b", 15)
        assert asyncio.get_running_loop().time() - started < 1.0  # not the 2 s lock timeout
        holder.rollback()
    assert second.health.ok


def test_p07_a_lost_race_between_replicas_is_retried_not_an_outage() -> None:
    driver = PostgresDriver("postgresql://unused/db", None)
    for race in (psycopg.errors.DeadlockDetected(), psycopg.errors.SerializationFailure()):
        assert driver.unavailable(race)
        assert driver.transient(race)
    assert not driver.transient(psycopg.errors.AdminShutdown())
