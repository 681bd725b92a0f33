"""Store upgrades: real stores written by earlier commits open, upgrade and keep their data.

The fixtures in tests/fixtures/stores were written by each commit's own store code
(make_fixtures.py there says how); every test works on a copy.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from bot.clock import ManualClock
from bot.errors import StoreError
from bot.store import HistoryEntry, JobRecord, RunRecord, Store
from bot.store.migrations import migrate
from bot.store.postgres import PostgresDriver
from bot.store.steps import MIGRATIONS, Migration
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import dm_event, php_json
from tests.test_ops_e2e import exit_of
from tests.test_process import make_config, serve, spawn

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stores"
OLD_STORES = {
    1: "v1-7eb563e.sqlite3",  # the first store
    2: "v2-328d4dd.sqlite3",  # + pending actions, jobs, job runs
    3: "v3-eb7c8fc.sqlite3",  # the inbox keeps the random, seen_randoms gone
    4: "v4-492e774.sqlite3",  # counters gone; the last store without a version
}
LATEST = len(MIGRATIONS)
DM = "dmroom01"
# What make_fixtures.py wrote into every fixture.
RANDOM_OF = {"join": "a1" * 32, "finished": "b2" * 32, "open": "c3" * 32}
ARGS_JSON = '{"path":"notes/plan.txt","text":"Buy milk"}'
HISTORY = [
    HistoryEntry(
        "user", "What is the capital of France?", "users/alice", "Alice", "41", 1780000060.0
    ),
    HistoryEntry("assistant", "Paris.", "", "talkbot", None, 1780000061.0),
]


def old_store(tmp_path: Path, version: int) -> Path:
    """A copy of the fixture of ``version``, where the daemon's config puts its store."""
    path = tmp_path / "talkbot.sqlite3"
    shutil.copyfile(FIXTURES / OLD_STORES[version], path)
    return path


def schema(path: Path) -> list[tuple[object, ...]]:
    """Every table and index with its SQL text, and each table's columns and indexes."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        described: list[tuple[object, ...]] = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
        ).fetchall()
        tables = [name for kind, name, _, _ in described if kind == "table"]
        for table in tables:
            columns = db.execute("SELECT * FROM pragma_table_info(?)", (table,)).fetchall()
            indexes = db.execute("SELECT * FROM pragma_index_list(?)", (table,)).fetchall()
            described += [("columns", table, *columns), ("indexes", table, *indexes)]
    return sorted(described, key=repr)


def contents(path: Path) -> tuple[int, list[str]]:
    """The schema version and a full SQL dump: what a 'file unchanged' check compares."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0]), list(db.iterdump())


def stored_version(path: Path) -> int:
    return contents(path)[0]


def backups(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("*.bak-*"))


async def open_and_close(path: Path, clock: ManualClock) -> None:
    await Store.open(path, clock).close()


@pytest.fixture
async def fresh_schema(tmp_path: Path, clock: ManualClock) -> list[tuple[object, ...]]:
    path = tmp_path / "fresh" / "talkbot.sqlite3"
    path.parent.mkdir()
    await open_and_close(path, clock)
    return schema(path)


# -- old stores keep their data --------------------------------------------------------


@pytest.mark.parametrize("version", sorted(OLD_STORES))
async def test_u01_an_old_store_opens_upgraded_with_its_data(
    tmp_path: Path, clock: ManualClock, version: int
) -> None:
    store = Store.open(old_store(tmp_path, version), clock)
    assert stored_version(tmp_path / "talkbot.sqlite3") == LATEST
    assert await store.recent_history(DM, 10) == HISTORY
    carol = (await store.role_overrides())["carol"]
    assert (carol.role, carol.set_by, carol.set_at) == ("admin", "users/alice", 1780000062.0)
    room = await store.get_room(DM)
    assert room is not None
    assert (room.mode, room.one_to_one) == ("all", True)
    [audit] = await store.recent_audit()
    assert (audit.actor, audit.action, audit.detail) == ("users/alice", "role", "carol admin")
    [still_open] = await store.open_events()  # message 42; the finished ones stay finished
    assert (still_open.id, still_open.kind) == (3, "Create")
    assert json.loads(still_open.body)["object"]["id"] == "42"
    assert await store.event_status(2) == "done"
    await store.close()


@pytest.mark.parametrize("version", [2, 3, 4])
async def test_pending_actions_and_jobs_survive_the_upgrade(
    tmp_path: Path, clock: ManualClock, version: int
) -> None:
    store = Store.open(old_store(tmp_path, version), clock)
    [action] = await store.open_pending(DM)
    assert (action.code, action.status, action.tool) == ("K7Q2M", "pending", "file_write")
    assert (action.args_json, action.args_hash) == (
        ARGS_JSON,
        sha256(ARGS_JSON.encode()).hexdigest(),
    )
    assert (action.requester, action.after_message_id, action.expires_at) == (
        "users/alice",
        "42",
        1780000662.0,
    )
    assert await store.get_pending(action.id) == action
    assert await store.pending_by_code("k7q2m") == action
    assert await store.list_jobs() == [
        JobRecord(
            id="standup",
            owner="users/alice",
            room="grouproom1",
            kind="cron",
            expr="0 9 * * 1-5",
            timezone="Europe/Berlin",
            message="Stand-up in 5 minutes",
            prompt=None,
            created_by_role="user",
            paused=False,
            misfire="once",
            source="chat",
            created_at=1780000062.0,
            active_since=1780000062.0,
            origin_room="grouproom1",  # step 5: taken as made where it posts
        )
    ]
    assert await store.job_runs("standup") == [
        RunRecord("standup", 1_780_038_000, "done", 1780000062.0, 1780000062.0, "")
    ]
    assert not await store.claim_run("standup", 1_780_038_000)  # that fire time never reruns
    assert await store.transition_pending(  # alice's yes still finds it waiting
        action.id, "pending", "approved", decided_by="users/alice", unexpired_at=clock.now()
    )
    await store.close()


@pytest.mark.parametrize("version", sorted(OLD_STORES))
async def test_webhooks_seen_before_the_upgrade_are_still_dropped_as_replays(
    tmp_path: Path, clock: ManualClock, version: int
) -> None:
    store = Store.open(old_store(tmp_path, version), clock)

    async def accept(random: str, dedupe_key: str | None) -> int | None:
        return await store.accept_event(
            room=DM, kind="Create", body=b"{}", random=random, dedupe_key=dedupe_key
        )

    assert await accept(RANDOM_OF["join"], None) is None  # a Join: known by its random only
    # A replayed request is the same random with the same body, so the same key (step 10:
    # one key per webhook; another body under an old random cannot be signed).
    assert await accept(RANDOM_OF["finished"], "Create:dmroom01:41") is None
    assert await accept(RANDOM_OF["open"], "Create:dmroom01:42") is None
    assert await accept("d4" * 32, "Create:dmroom01:41") is None  # same message, new random
    new = await accept("d4" * 32, "Create:dmroom01:43")
    assert new is not None
    assert [item.id for item in await store.open_events()] == [3, new]
    await store.close()


@pytest.mark.parametrize("version", sorted(OLD_STORES))
async def test_an_upgraded_old_store_has_the_schema_of_a_fresh_one(
    tmp_path: Path, clock: ManualClock, version: int, fresh_schema: list[tuple[object, ...]]
) -> None:
    path = old_store(tmp_path, version)
    await open_and_close(path, clock)
    assert schema(path) == fresh_schema


# -- every step from every version ---------------------------------------------------


@pytest.mark.parametrize("version", range(LATEST + 1))
async def test_every_version_upgrades_to_the_schema_of_a_fresh_store(
    tmp_path: Path, clock: ManualClock, version: int, fresh_schema: list[tuple[object, ...]]
) -> None:
    path = tmp_path / "talkbot.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db, path, clock, MIGRATIONS[:version])
    assert stored_version(path) == version
    await open_and_close(path, clock)
    assert stored_version(path) == LATEST
    assert schema(path) == fresh_schema


def test_the_steps_are_numbered_from_one_and_each_changes_the_schema(tmp_path: Path) -> None:
    seen: list[list[tuple[object, ...]]] = []
    for version in range(LATEST + 1):
        path = tmp_path / f"v{version}.sqlite3"
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            migrate(db, path, ManualClock(), MIGRATIONS[:version])
        assert stored_version(path) == version
        seen.append(schema(path))
    assert all(seen[i] != seen[i + 1] for i in range(LATEST))


async def test_inbox_ids_are_never_given_out_twice_across_the_rebuild(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "talkbot.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db, path, clock, MIGRATIONS[:2])
        for _ in range(3):
            db.execute(
                "INSERT INTO inbox (room, kind, body, received_at) VALUES ('r', 'Join', '', 0)"
            )
        db.execute("DELETE FROM inbox WHERE id = 3")  # purged: its id stays used
    store = Store.open(path, clock)
    new = await store.accept_event(
        room="r", kind="Create", body=b"{}", random="e5" * 32, dedupe_key="Create:r:1"
    )
    assert new == 4
    await store.close()


# -- backups -------------------------------------------------------------------------


async def test_a_backup_of_the_old_store_is_taken_before_migrating(
    tmp_path: Path, clock: ManualClock
) -> None:
    clock.set(datetime(2026, 11, 30, 15, 0, 0, tzinfo=UTC))
    path = old_store(tmp_path, 1)
    with capture_logs() as logs:
        store = Store.open(path, clock)
    backup = tmp_path / "talkbot.sqlite3.bak-v1-20261130T150000Z"
    assert backups(tmp_path) == [backup]
    [migrated] = [e for e in logs if e["event"] == "store.migrated"]
    assert (migrated["from_version"], migrated["to_version"]) == (1, LATEST)
    assert migrated["backup"] == str(backup)
    assert schema(backup) == schema(FIXTURES / OLD_STORES[1])  # the old version, as it was
    assert contents(backup) == contents(FIXTURES / OLD_STORES[1])  # with all its rows
    assert backups(tmp_path) == [backup]  # one self-contained file: no -wal beside it
    await store.close()


async def test_no_backup_for_a_fresh_store_or_one_already_current(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "talkbot.sqlite3"
    with capture_logs() as logs:
        await Store.open(path, clock).close()
        await Store.open(path, clock).close()
    assert backups(tmp_path) == []
    assert [e for e in logs if e["event"] == "store.migrated"] == []


async def test_the_last_unversioned_store_gets_its_version_and_a_backup_before_later_steps(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = old_store(tmp_path, 4)
    await Store.open(path, clock).close()
    assert stored_version(path) == LATEST
    [backup] = backups(tmp_path)
    assert backup.name.startswith("talkbot.sqlite3.bak-v4-")


# -- refusals and failures -----------------------------------------------------------


async def newer_store(tmp_path: Path, clock: ManualClock) -> Path:
    path = tmp_path / "talkbot.sqlite3"
    await open_and_close(path, clock)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {LATEST + 3}")
    return path


async def test_u01_a_store_newer_than_the_code_is_refused_and_left_alone(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = await newer_store(tmp_path, clock)
    before = path.read_bytes()
    with pytest.raises(StoreError) as refused:
        Store.open(path, clock)
    assert str(refused.value) == (
        f"the store at {path} has schema version {LATEST + 3}, newer than this talkbot"
        f" understands ({LATEST}): upgrade talkbot, or restore a backup made before the upgrade"
    )
    assert path.read_bytes() == before
    assert backups(tmp_path) == []
    with pytest.raises(StoreError, match="newer than this talkbot"):
        Store.open(path, clock)  # the lock was released: the same answer, not "in use"


async def test_u01_serve_on_a_newer_store_exits_with_one_line(
    tmp_path: Path, clock: ManualClock, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = make_config(tmp_path, talk, llm)
    path = await newer_store(tmp_path, clock)
    code, lines = await exit_of((await spawn(config)).proc)
    assert code == 78  # like a broken config: systemd does not restart-loop on it
    assert lines == [
        f"talkbot: the store at {path} has schema version {LATEST + 3}, newer than this"
        f" talkbot understands ({LATEST}): upgrade talkbot, or restore a backup made before"
        " the upgrade"
    ]


async def test_a_failing_step_rolls_back_every_step_of_the_upgrade(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = old_store(tmp_path, 1)
    before = contents(path)
    broken = Migration(
        "a broken step",
        ("ALTER TABLE inbox ADD COLUMN random TEXT", "INSERT INTO no_such_table VALUES (1)"),
    )
    with (
        contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db,
        pytest.raises(StoreError) as failed,
    ):
        migrate(db, path, clock, (*MIGRATIONS[:2], broken))
    assert str(failed.value) == (
        f"cannot upgrade the store at {path} from schema version 1 to 3: step 3 (a broken"
        " step) failed: no such table: no_such_table; the store is unchanged"
    )
    assert contents(path) == before  # step 2's tables and step 3's column are gone too
    await open_and_close(path, clock)  # and the real steps still work
    assert stored_version(path) == LATEST


def test_an_unversioned_store_of_unknown_shape_is_refused(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "talkbot.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    with pytest.raises(StoreError, match=r"has no schema version and its tables \(notes\)"):
        Store.open(path, clock)
    assert backups(tmp_path) == []


# -- end to end ----------------------------------------------------------------------


async def test_u01_the_daemon_upgrades_the_first_store_and_answers_webhooks(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """Issue 12: a store from 7eb563e made every webhook fail with 500 (no column random)."""
    config = make_config(tmp_path, talk, llm)
    old_store(tmp_path, 1)
    log = tmp_path / "daemon.log"
    llm.reply("Rome.")  # message 42, accepted by the old daemon and never answered
    llm.reply("Berlin.")
    async with serve(config, log=log) as daemon:
        replay = dm_event("What is the capital of France?", message_id=41)
        assert await daemon.post(php_json(replay)) == 200  # known from before: dropped
        assert await daemon.post(php_json(dm_event("And of Germany?", message_id=43))) == 200
        await talk.wait_for_messages(2, timeout=15)
    assert talk.texts(DM) == ["Rome.", "Berlin."]
    assert len(llm.requests) == 2
    assert "What is the capital of France?" in llm.requests[0].raw  # the old history
    assert "Paris." in llm.requests[0].raw
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    [migrated] = [e for e in events if e["event"] == "store.migrated"]
    assert (migrated["from_version"], migrated["to_version"]) == (1, LATEST)
    assert [str(path) for path in backups(tmp_path)] == [migrated["backup"]]


# -- step 10: one dedupe key per webhook ---------------------------------------------------

# Rows as a version-9 store has them: a message (its key and its random), a Join (its
# random only), a random left by step 3 ('seen'), a row from before randoms were kept.
V9_INBOX = [
    ("dm", "Create:dm:41", "b2" * 32, "Create", "done"),
    ("dm", None, "a1" * 32, "Join", "done"),
    ("", None, "c3" * 32, "seen", "done"),
    ("dm", None, None, "Leave", "done"),
    ("dm", "Create:dm:42", "d4" * 32, "Create", "pending"),
]


def _fill_v9_inbox(execute: Callable[[str, tuple[object, ...]], object]) -> None:
    for room, key, random, kind, status in V9_INBOX:
        execute(
            "INSERT INTO inbox (room, dedupe_key, random, kind, body, received_at, status)"
            " VALUES (%s, %s, %s, %s, '{}', 1.0, %s)",
            (room, key, random, kind, status),
        )


async def _replays_after_step_10(store: Store) -> None:
    async def accept(random: str, key: str | None) -> int | None:
        return await store.accept_event(
            room="dm", kind="Create", body=b"{}", random=random, dedupe_key=key
        )

    assert await accept("b2" * 32, "Create:dm:41") is None  # the same request again
    assert await accept("ee" * 32, "Create:dm:41") is None  # the same message, new random
    assert await accept("a1" * 32, None) is None  # a Join: by its random
    assert await accept("c3" * 32, None) is None  # a random from before step 3
    keyless = await accept("ff" * 32, None)  # a new keyless event
    assert keyless is not None
    assert await accept("ff" * 32, None) is None  # ... once
    message = await accept("ee" * 32, "Create:dm:43")  # a new message
    assert message is not None
    assert [item.id for item in await store.open_events()] == [5, keyless, message]


async def test_u02_step_10_keeps_every_dedupe_of_a_sqlite_store(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "talkbot.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db, path, clock, MIGRATIONS[:9])
        _fill_v9_inbox(lambda sql, params: db.execute(sql.replace("%s", "?"), params))
    store = Store.open(path, clock)
    try:
        await _replays_after_step_10(store)
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        keys = [row[0] for row in db.execute("SELECT dedupe_key FROM inbox ORDER BY id LIMIT 5")]
    assert keys == [
        "Create:dm:41",
        "random:" + "a1" * 32,
        "random:" + "c3" * 32,
        "row:4",
        "Create:dm:42",
    ]


async def test_u02_step_10_keeps_every_dedupe_of_a_postgres_store(
    postgres_url: str, clock: ManualClock
) -> None:
    PostgresDriver.open(postgres_url, None, MIGRATIONS[:9])[0].close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        _fill_v9_inbox(conn.execute)
    store = Store.open_postgres(postgres_url, None, clock)
    try:
        await _replays_after_step_10(store)
    finally:
        await store.close()
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT dedupe_key FROM inbox ORDER BY id LIMIT 5").fetchall()
    assert [row[0] for row in rows] == [
        "Create:dm:41",
        "random:" + "a1" * 32,
        "random:" + "c3" * 32,
        "row:4",
        "Create:dm:42",
    ]
