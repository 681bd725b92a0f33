"""The one store: inbox, rooms, history, roles, confirmations, jobs and audit, in SQLite.

Callers speak in the product's terms; nothing outside this module sees SQL. Every method
is a coroutine the event loop awaits: the SQLite calls run on one worker thread that owns
the connection (WAL, synchronous=NORMAL: a commit survives a crash of the process), so a
locked or full store never blocks the loop (H04).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog

from bot.clock import Clock
from bot.errors import StoreError, StoreUnavailableError
from bot.migrations import migrate

log = structlog.get_logger(__name__)

T = TypeVar("T")

BODY_RETENTION_S = 14 * 24 * 3600
ROW_RETENTION_S = 180 * 24 * 3600

# H04: how long one attempt waits for another connection's lock, on the worker thread.
BUSY_TIMEOUT_MS = 200
# A webhook waits at most this long for a commit (Talk waits inside the sender's request);
# once the store is known down, it gets one attempt only.
INTAKE_BUDGET_S = 2.0
# Between two attempts of queued writes while the store cannot commit (waited on the loop).
RETRY_INTERVAL_S = 0.25
# While the store is down: how often the probe (_probe) tries a commit.
PROBE_INTERVAL_S = 0.5
# The probe writes (and deletes in the same commit) a row that fills the free pages and
# needs this many more, so it grows the file like a long message would: a full disk (or
# SQLite's max_page_count) fails it too. Capped: a freelist that big is room enough.
PROBE_GROWTH_PAGES = 4
PROBE_MAX_BYTES = 1024 * 1024
MAX_PAGE_COUNT = 0xFFFFFFFE  # SQLite's own ceiling: "no limit"
# SQLite result codes that mean "not now" rather than "this statement is wrong": busy,
# locked, no memory, read-only, I/O error, full, cannot open, lock protocol.
UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})

# The schema (tables, columns, indexes) is built and upgraded by bot/migrations.py;
# docs/store.md describes each version.

# A message at or below its room's replay floor was accepted before and purged since:
# the row is not inserted, so the webhook is a repeat (H03).
INSERT_EVENT = (
    "INSERT OR IGNORE INTO inbox (room, dedupe_key, random, kind, body, received_at)"
    " SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
    " (SELECT 1 FROM replay_floor WHERE room = ? AND message_id >= ?)"
)
# Rows purged per commit: housekeeping never holds the store's thread for long (#14).
PURGE_CHUNK = 500
# Kinds whose dedupe key ends in the Talk id of the message itself (not a reacted one).
_FLOORED_KINDS = ("Create", "Activity")


@dataclass(frozen=True)
class InboxItem:
    id: int
    room: str
    kind: str
    body: bytes
    received_at: float
    attempts: int


@dataclass(frozen=True)
class RoomRecord:
    token: str
    name: str
    one_to_one: bool
    mode: str | None
    joined: bool
    last_seen: float


@dataclass(frozen=True)
class HistoryEntry:
    role: str  # "user" | "assistant" | "tool" | "note"
    content: str
    actor_id: str = ""
    actor_name: str = ""
    message_id: str | None = None
    created_at: float = 0.0
    # Where the text came from beyond its role: "" (clean) or labels like "untrusted",
    # "private,untrusted" (bot/agent/history.py reads them; docs/store.md, version 6).
    provenance: str = ""


@dataclass(frozen=True)
class RoleOverride:
    uid: str
    role: str
    set_by: str
    set_at: float


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor: str
    room: str
    action: str
    tool: str
    args_hash: str
    outcome: str
    detail: str


# A pending action's status: pending -> approved -> running -> done | failed; pending ->
# denied | expired | cancelled. Every change is a compare-and-set on the status (A08).
# These statuses still hold the action's code (it is not finished).
OPEN_ACTION_STATUSES = ("pending", "approved", "running")


@dataclass(frozen=True)
class NewPendingAction:
    """One dangerous call to park: exactly this tool with exactly these canonical args."""

    code: str
    turn_id: str
    call_id: str
    room: str
    requester: str
    requester_name: str
    tool: str
    args_json: str
    args_hash: str
    approver: str
    state_json: str
    after_message_id: str
    expires_at: float


@dataclass(frozen=True, kw_only=True)
class PendingAction(NewPendingAction):
    """A stored pending action (a confirmation) in whatever state it is now."""

    id: int
    prompt_text: str
    created_at: float
    status: str
    decided_by: str
    result_text: str
    updated_at: float


@dataclass(frozen=True)
class JobRecord:
    """A scheduled job as persisted; the scheduler gives the fields their meaning."""

    id: str
    owner: str  # actor id of the creator, or "config"
    room: str
    kind: str  # "cron" | "every" | "at"
    expr: str
    timezone: str
    message: str | None
    prompt: str | None
    created_by_role: str
    paused: bool
    misfire: str  # "once" | "skip"
    source: str  # "config" | "chat" | "admin"
    created_at: float
    active_since: float  # fire times before this are neither run nor caught up
    origin_room: str = ""  # where it was made; "" for the config's jobs


@dataclass(frozen=True)
class RunRecord:
    """One row of the run ledger: a job's fire time and what became of it."""

    job_id: str
    fire_time: int  # epoch seconds
    status: str  # "running" | "done" | "failed" | "skipped" | "interrupted"
    started_at: float
    finished_at: float | None
    detail: str


@dataclass(frozen=True)
class StoreHealth:
    """Whether the store's last commit went through; if not, since when and why."""

    ok: bool
    since: float  # clock time of the last change
    reason: str = ""


Work = Callable[[sqlite3.Connection], T]
HealthWatcher = Callable[[StoreHealth], None]


@dataclass
class _Write:
    """One write waiting for its group commit."""

    work: Callable[[sqlite3.Connection], Any]
    done: asyncio.Future[Any]
    deadline: float | None  # loop time after which it is refused; None: waits for the store


@dataclass(frozen=True)
class _Failed:
    """The outcome of one write of a batch that failed on its own (the rest commits)."""

    error: BaseException


class Store:
    """The durable state of one talkbot process; ``open`` takes an exclusive lock.

    Every SQLite call runs on one worker thread that owns the connection; the event loop
    only awaits it. Writes of one loop tick share a commit. A write that meets a locked or
    full store waits on the loop and tries again (a webhook's only for INTAKE_BUDGET_S).
    """

    def __init__(self, db: sqlite3.Connection, clock: Clock, lock_fd: int | None) -> None:
        self._db = db
        self._clock = clock
        self._lock_fd = lock_fd
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="talkbot-store")
        self._batch: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._health = StoreHealth(ok=True, since=clock.now())
        self._watchers: list[HealthWatcher] = []
        self._closed = False

    @classmethod
    def open(cls, path: Path, clock: Clock) -> Store:
        """Open (or create) the store, upgrading its schema to this code's version.

        Synchronous: it runs once at start, before anything else uses the store.
        """
        lock_fd = None if str(path) == ":memory:" else _lock(path)
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")  # at start only: nothing waits on us yet
            upgrade = migrate(db, path, clock)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except (sqlite3.Error, StoreError) as exc:
            if db is not None:
                db.close()
            if lock_fd is not None:
                os.close(lock_fd)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        if 0 < upgrade.from_version < upgrade.to_version:  # not for a new store
            log.info(
                "store.migrated",
                from_version=upgrade.from_version,
                to_version=upgrade.to_version,
                backup=None if upgrade.backup is None else str(upgrade.backup),
            )
        return cls(db, clock, lock_fd)

    async def close(self) -> None:
        """Stop retrying, refuse what still waits, close the connection; twice is fine."""
        if self._closed:
            return
        self._closed = True
        for task in (self._prober, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        _refuse(self._batch, StoreUnavailableError, "the store is closed")
        self._batch = []
        await asyncio.get_running_loop().run_in_executor(self._worker, self._db.close)
        self._worker.shutdown(wait=False)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def clock(self) -> Clock:
        return self._clock

    # -- the worker thread, group commit and health ----------------------------------

    @property
    def health(self) -> StoreHealth:
        return self._health

    def watch_health(self, watcher: HealthWatcher) -> None:
        """Call ``watcher`` on the loop each time the store stops or starts committing."""
        self._watchers.append(watcher)

    async def _on_worker(self, work: Work[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, work, self._db)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return await self._on_worker(lambda db: db.execute(sql, tuple(params)).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store: {exc}") from exc

    async def _read_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    async def _write(
        self, sql: str, params: Sequence[Any], *, budget_s: float | None = None
    ) -> int | None:
        """One statement, committed with the other writes of this loop tick.

        Returns the new row id, or None when the statement changed nothing (an ignored
        duplicate). It returns only after the commit, so what it wrote is durable.
        """

        def execute(db: sqlite3.Connection) -> int | None:
            cursor = db.execute(sql, tuple(params))
            return cursor.lastrowid if cursor.rowcount else None

        return await self._apply(execute, budget_s=budget_s)

    async def _change(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in the group commit; how many rows it changed."""
        return await self._apply(lambda db: db.execute(sql, tuple(params)).rowcount)

    async def _apply(self, work: Work[T], *, budget_s: float | None = None) -> T:
        """Run ``work`` on the worker inside the next group commit; return once committed.

        While the store cannot commit, the write is tried again every RETRY_INTERVAL_S:
        without a budget until it commits (or its caller is cancelled); with one, until
        the budget is spent (none once the store is known down), then StoreUnavailableError.
        """
        loop = asyncio.get_running_loop()
        deadline = None
        if budget_s is not None:
            deadline = loop.time() + (budget_s if self._health.ok else 0.0)
        entry = _Write(work, loop.create_future(), deadline)
        self._batch.append(entry)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="store-commit")
        return cast("T", await entry.done)

    async def _flush(self) -> None:
        """Commit what is queued, batch after batch; writes queued meanwhile join the next."""
        try:
            while self._batch:
                batch = [entry for entry in self._batch if not entry.done.done()]
                self._batch = []
                if batch:
                    await self._commit(batch)
        finally:
            self._flusher = None

    async def _commit(self, batch: list[_Write]) -> None:
        try:
            results = await self._on_worker(partial(_run_batch, works=[e.work for e in batch]))
        except asyncio.CancelledError:
            _refuse(batch, StoreUnavailableError, "the store is closed")
            raise
        except sqlite3.Error as exc:
            if not _unavailable(exc):
                _refuse(batch, StoreError, f"cannot write to the store: {exc}")
                return
            self._set_health(ok=False, reason=str(exc))
            self._requeue(batch, exc)
            await asyncio.sleep(RETRY_INTERVAL_S)
            return
        for entry, result in zip(batch, results, strict=True):
            if entry.done.done():
                continue
            if isinstance(result, _Failed):
                entry.done.set_exception(result.error)
            else:
                entry.done.set_result(result)

    def _requeue(self, batch: list[_Write], exc: sqlite3.Error) -> None:
        """Writes out of budget are refused; the others go first in the next batch."""
        now = asyncio.get_running_loop().time()
        late = [e.deadline is not None and now >= e.deadline for e in batch]
        refused = [entry for entry, out in zip(batch, late, strict=True) if out]
        _refuse(refused, StoreUnavailableError, f"the store cannot save now: {exc}")
        self._batch[:0] = [entry for entry, out in zip(batch, late, strict=True) if not out]

    def _set_health(self, *, ok: bool, reason: str = "") -> None:
        if ok == self._health.ok:
            return
        was = self._health
        self._health = StoreHealth(ok=ok, since=self._clock.now(), reason=reason)
        if ok:
            log.warning("store.recovered", down_s=round(self._health.since - was.since, 3))
        else:
            log.error("store.unavailable", reason=reason)
            if self._prober is None:
                self._prober = asyncio.create_task(self._probe_until_healthy(), name="store-probe")
        for watcher in self._watchers:
            try:
                watcher(self._health)
            except Exception:  # a watcher's bug must not stop the commits
                log.exception("store.health_watcher_failed")

    async def _probe_until_healthy(self) -> None:
        """While the store is down, try a commit that needs fresh pages now and then.

        Only this probe declares the store healthy again: a small write that fits a
        nearly full disk commits, yet the store is not back until the probe's does.
        """
        try:
            while not self._health.ok:
                await asyncio.sleep(PROBE_INTERVAL_S)
                try:
                    [outcome] = await self._on_worker(partial(_run_batch, works=[_probe]))
                except sqlite3.Error:
                    continue
                if not isinstance(outcome, _Failed):
                    self._set_health(ok=True)
        finally:
            self._prober = None

    async def limit_growth_for_tests(self, pages: int | None) -> None:
        """Test hook: the file may grow by ``pages`` pages more, after which every write
        that needs a page fails with SQLITE_FULL exactly as on a full disk; None lifts it."""

        def limit(db: sqlite3.Connection) -> None:
            size = int(db.execute("PRAGMA page_count").fetchone()[0])
            top = MAX_PAGE_COUNT if pages is None else size + pages
            db.execute(f"PRAGMA max_page_count = {int(top)}")

        await self._on_worker(limit)

    # -- inbox -----------------------------------------------------------------------

    async def accept_event(
        self,
        *,
        room: str,
        kind: str,
        body: bytes,
        random: str,
        dedupe_key: str | None,
        message_id: int | None = None,
    ) -> int | None:
        """Store a verified webhook; None when its random or its key was seen before.

        Returns once the row is committed (W04, W05). Webhooks arriving together are
        committed together: one transaction per event-loop tick, not one per webhook.
        StoreUnavailableError when the store cannot commit within INTAKE_BUDGET_S (H04).
        """
        row = (room, dedupe_key, random, kind, body.decode("utf-8"), self._clock.now())
        return await self._write(INSERT_EVENT, (*row, room, message_id), budget_s=INTAKE_BUDGET_S)

    async def open_events(self) -> list[InboxItem]:
        """Everything accepted and not finished, oldest first (resumed after a restart)."""
        rows = await self._read(
            "SELECT id, room, kind, body, received_at, attempts FROM inbox"
            " WHERE status IN ('pending', 'running') ORDER BY id"
        )
        return [_inbox_item(row) for row in rows]

    async def get_event(self, event_id: int) -> InboxItem | None:
        row = await self._read_one(
            "SELECT id, room, kind, body, received_at, attempts FROM inbox WHERE id = ?",
            (event_id,),
        )
        return None if row is None else _inbox_item(row)

    async def start_event(self, event_id: int) -> None:
        await self._write(
            "UPDATE inbox SET status = 'running', attempts = attempts + 1 WHERE id = ?",
            (event_id,),
        )

    async def finish_event(self, event_id: int, status: str = "done", error: str = "") -> None:
        await self._write(
            "UPDATE inbox SET status = ?, finished_at = ?, error = ? WHERE id = ?",
            (status, self._clock.now(), error, event_id),
        )

    async def drop_events(self, event_ids: list[int], reason: str) -> None:
        """Mark events given up without handling (a flooded room), in one commit."""
        rows = [(self._clock.now(), reason, event_id) for event_id in event_ids]

        def drop(db: sqlite3.Connection) -> None:
            with _savepoint(db):
                db.executemany(
                    "UPDATE inbox SET status = 'dropped', finished_at = ?, error = ? WHERE id = ?",
                    rows,
                )

        await self._apply(drop)

    async def inbox_backlog(self, *, waiting_only: bool = False) -> int:
        """Accepted events not finished; ``waiting_only``: those not started yet."""
        statuses = "('pending')" if waiting_only else "('pending', 'running')"
        row = await self._read_one(
            f"SELECT count(*) FROM inbox WHERE status IN {statuses}"  # noqa: S608 - two fixed fragments
        )
        return 0 if row is None else int(row[0])

    async def seen_any(self, dedupe_keys: Sequence[str]) -> bool:
        """Whether an event with one of these keys was accepted (and not yet purged)."""
        marks = ", ".join("?" for _ in dedupe_keys)
        row = await self._read_one(
            f"SELECT 1 FROM inbox WHERE dedupe_key IN ({marks}) LIMIT 1",  # noqa: S608 - placeholders only
            tuple(dedupe_keys),
        )
        return row is not None

    async def event_status(self, event_id: int) -> str | None:
        row = await self._read_one("SELECT status FROM inbox WHERE id = ?", (event_id,))
        return None if row is None else str(row[0])

    async def purge(
        self,
        *,
        bodies_older_than_s: float = BODY_RETENTION_S,
        rows_older_than_s: float = ROW_RETENTION_S,
    ) -> None:
        """Housekeeping: finished events lose their body, and much later their row.

        The row (its room + message id and its random) is what makes a replay a no-op,
        so it outlives the body by far (W05).
        """
        now = self._clock.now()
        bodies_before, rows_before = now - bodies_older_than_s, now - rows_older_than_s

        def empty_bodies(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE inbox SET body = '' WHERE id IN (SELECT id FROM inbox"
                " WHERE status NOT IN ('pending', 'running') AND received_at < ?"
                " AND body != '' ORDER BY id LIMIT ?)",
                (bodies_before, PURGE_CHUNK),
            ).rowcount

        def delete_rows(db: sqlite3.Connection) -> int:
            with _savepoint(db):
                ids = [
                    row[0]
                    for row in db.execute(
                        "SELECT id FROM inbox WHERE status NOT IN ('pending', 'running')"
                        " AND received_at < ? ORDER BY id LIMIT ?",
                        (rows_before, PURGE_CHUNK),
                    )
                ]
                _raise_replay_floors(db, ids)
                db.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i in ids])
            return len(ids)

        # In chunks, each its own commit: webhooks arriving meanwhile are committed between
        # them instead of waiting behind one long transaction on the store's thread.
        for step in (empty_bodies, delete_rows):
            while await self._apply(step) == PURGE_CHUNK:
                pass

    # -- rooms -----------------------------------------------------------------------

    async def record_room(
        self, token: str, *, name: str, one_to_one: bool, joined: bool | None = None
    ) -> None:
        now = self._clock.now()
        await self._write(
            "INSERT INTO rooms (token, name, one_to_one, joined, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO UPDATE SET"
            " name = excluded.name, one_to_one = excluded.one_to_one,"
            " joined = CASE WHEN ? IS NULL THEN rooms.joined ELSE excluded.joined END,"
            " last_seen = excluded.last_seen",
            (token, name, int(one_to_one), 1 if joined is None else int(joined), now, now, joined),
        )

    async def get_room(self, token: str) -> RoomRecord | None:
        row = await self._read_one(
            "SELECT token, name, one_to_one, mode, joined, last_seen FROM rooms WHERE token = ?",
            (token,),
        )
        return None if row is None else _room(row)

    async def list_rooms(self) -> list[RoomRecord]:
        rows = await self._read(
            "SELECT token, name, one_to_one, mode, joined, last_seen FROM rooms ORDER BY token"
        )
        return [_room(row) for row in rows]

    async def set_room_mode(self, token: str, mode: str | None) -> None:
        now = self._clock.now()
        await self._write(
            "INSERT INTO rooms (token, mode, first_seen, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (token) DO UPDATE SET mode = excluded.mode",
            (token, mode, now, now),
        )

    # -- history ---------------------------------------------------------------------

    async def add_history(self, room: str, entry: HistoryEntry) -> None:
        await self._write(
            "INSERT INTO history (room, role, actor_id, actor_name, content, message_id,"
            " created_at, provenance) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                room,
                entry.role,
                entry.actor_id,
                entry.actor_name,
                entry.content,
                entry.message_id,
                entry.created_at or self._clock.now(),
                entry.provenance,
            ),
        )

    async def recent_history(self, room: str, limit: int) -> list[HistoryEntry]:
        """The last ``limit`` entries of a room, oldest first."""
        rows = await self._read(
            "SELECT role, content, actor_id, actor_name, message_id, created_at, provenance"
            " FROM history"
            " WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, limit),
        )
        return [HistoryEntry(*row) for row in reversed(rows)]

    async def forget_history(self, room: str) -> int:
        return await self._change("DELETE FROM history WHERE room = ?", (room,))

    async def trim_history(self, room: str, keep: int) -> None:
        """Keep a room's newest ``keep`` rows; the index walks only those (H06)."""
        await self._write(
            "DELETE FROM history WHERE room = ? AND id <= (SELECT id FROM history"
            " WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (room, room, keep),
        )

    # -- roles -----------------------------------------------------------------------

    async def set_role_override(self, uid: str, role: str, *, set_by: str) -> None:
        await self._write(
            "INSERT INTO role_overrides (uid, role, set_by, set_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (uid) DO UPDATE SET role = excluded.role, set_by = excluded.set_by,"
            " set_at = excluded.set_at",
            (uid, role, set_by, self._clock.now()),
        )

    async def remove_role_override(self, uid: str) -> bool:
        return await self._change("DELETE FROM role_overrides WHERE uid = ?", (uid,)) > 0

    async def role_overrides(self) -> dict[str, RoleOverride]:
        rows = await self._read("SELECT uid, role, set_by, set_at FROM role_overrides")
        return {row["uid"]: RoleOverride(*row) for row in rows}

    # -- audit -----------------------------------------------------------------------

    async def audit(
        self,
        *,
        actor: str,
        room: str,
        action: str,
        tool: str = "",
        args_hash: str = "",
        outcome: str = "",
        detail: str = "",
    ) -> None:
        await self._write(
            "INSERT INTO audit (at, actor, room, action, tool, args_hash, outcome, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self._clock.now(), actor, room, action, tool, args_hash, outcome, detail),
        )

    async def recent_audit(self, limit: int = 50) -> list[AuditEntry]:
        rows = await self._read(
            "SELECT at, actor, room, action, tool, args_hash, outcome, detail FROM audit"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [AuditEntry(*row) for row in reversed(rows)]

    # -- confirmations (pending actions) ----------------------------------------------

    async def create_pending(
        self, actions: Sequence[NewPendingAction]
    ) -> list[PendingAction] | None:
        """Store the pending actions of one turn together; None if a code is already open."""
        now = self._clock.now()

        def insert(db: sqlite3.Connection) -> list[int] | None:
            try:
                with _savepoint(db):
                    return [_insert_pending(db, action, now) for action in actions]
            except sqlite3.IntegrityError:
                return None

        ids = await self._apply(insert)
        if ids is None:
            return None
        return [action for action_id in ids if (action := await self.get_pending(action_id))]

    async def get_pending(self, action_id: int) -> PendingAction | None:
        found = await self._pending_where("id = ?", (action_id,))
        return found[0] if found else None

    async def pending_by_code(self, code: str) -> PendingAction | None:
        """The action with this code: the open one, else the latest that had it."""
        found = await self._pending_where(
            "code = ? ORDER BY status IN ('pending', 'approved', 'running') DESC, id DESC LIMIT 1",
            (code.upper(),),
        )
        return found[0] if found else None

    async def open_pending(self, room: str) -> list[PendingAction]:
        """Actions in a room still waiting for an answer (expired or not), oldest first."""
        return await self._pending_where("room = ? AND status = 'pending' ORDER BY id", (room,))

    async def list_open_pending(self) -> list[PendingAction]:
        """Every action not finished yet, in every room, oldest first (for !pending)."""
        return await self._pending_where(
            "status IN ('pending', 'approved', 'running') ORDER BY id", ()
        )

    async def interrupted_pending(self) -> list[PendingAction]:
        """Actions approved or running when the process stopped (never re-run, A10)."""
        return await self._pending_where("status IN ('approved', 'running') ORDER BY id", ())

    async def set_pending_prompt(self, action_id: int, prompt_text: str) -> None:
        await self._write(
            "UPDATE pending_actions SET prompt_text = ? WHERE id = ?", (prompt_text, action_id)
        )

    async def transition_pending(
        self,
        action_id: int,
        from_status: str,
        to_status: str,
        *,
        decided_by: str | None = None,
        result_text: str | None = None,
        unexpired_at: float | None = None,
    ) -> bool:
        """Compare-and-set the status; False when it was not ``from_status`` (or expired)."""
        sql = (
            "UPDATE pending_actions SET status = ?, updated_at = ?,"
            " decided_by = COALESCE(?, decided_by), result_text = COALESCE(?, result_text)"
            " WHERE id = ? AND status = ?"
        )
        params: list[Any] = [
            to_status,
            self._clock.now(),
            decided_by,
            result_text,
            action_id,
            from_status,
        ]
        if unexpired_at is not None:
            sql += " AND expires_at > ?"
            params.append(unexpired_at)
        return await self._change(sql, params) == 1

    async def claim_turn_resume(self, turn_id: str) -> list[PendingAction] | None:
        """All actions of a turn, once, when none is open any more; else None."""

        def claim(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT count(*) FROM pending_actions WHERE turn_id = ?"
                " AND status IN ('pending', 'approved', 'running')",
                (turn_id,),
            ).fetchone()
            if int(row[0]) > 0:
                return False
            claimed = db.execute(
                "UPDATE pending_actions SET resumed = 1 WHERE turn_id = ? AND resumed = 0",
                (turn_id,),
            )
            return claimed.rowcount > 0

        if not await self._apply(claim):
            return None
        return await self._pending_where("turn_id = ? ORDER BY id", (turn_id,))

    async def _pending_where(self, where: str, params: Sequence[Any]) -> list[PendingAction]:
        rows = await self._read(
            f"SELECT {_PENDING_COLUMNS} FROM pending_actions WHERE {where}",  # noqa: S608 - fixed fragments, values bound
            tuple(params),
        )
        return [PendingAction(**dict(zip(row.keys(), row, strict=True))) for row in rows]

    # -- schedules (jobs and run ledger) ------------------------------------------------

    async def save_job(self, job: JobRecord) -> None:
        """Insert or replace a job definition by id."""
        await self._write(
            "INSERT INTO jobs (id, owner, room, kind, expr, timezone, message, prompt,"
            " created_by_role, paused, misfire, source, created_at, active_since, origin_room)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " owner = excluded.owner, room = excluded.room, kind = excluded.kind,"
            " expr = excluded.expr, timezone = excluded.timezone, message = excluded.message,"
            " prompt = excluded.prompt, created_by_role = excluded.created_by_role,"
            " paused = excluded.paused, misfire = excluded.misfire, source = excluded.source,"
            " created_at = excluded.created_at, active_since = excluded.active_since,"
            " origin_room = excluded.origin_room",
            (
                job.id,
                job.owner,
                job.room,
                job.kind,
                job.expr,
                job.timezone,
                job.message,
                job.prompt,
                job.created_by_role,
                int(job.paused),
                job.misfire,
                job.source,
                job.created_at,
                job.active_since,
                job.origin_room,
            ),
        )

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = await self._read_one(f"{_JOB_SELECT} WHERE id = ?", (job_id,))
        return None if row is None else _job(row)

    async def list_jobs(
        self, *, owner: str | None = None, source: str | None = None, room: str | None = None
    ) -> list[JobRecord]:
        """Jobs ordered by id, optionally only one owner's, one source's or one room's."""
        rows = await self._read(
            f"{_JOB_SELECT} WHERE (? IS NULL OR owner = ?) AND (? IS NULL OR source = ?)"
            " AND (? IS NULL OR room = ?) ORDER BY id",
            (owner, owner, source, source, room, room),
        )
        return [_job(row) for row in rows]

    async def delete_job(self, job_id: str) -> bool:
        """Remove a definition; its ledger rows stay, so a reused id never re-runs a fire time."""
        return await self._change("DELETE FROM jobs WHERE id = ?", (job_id,)) > 0

    async def claim_run(
        self, job_id: str, fire_time: int, *, status: str = "running", detail: str = ""
    ) -> bool:
        """Enter a fire time in the ledger; False when it is there already (never run twice)."""
        return (
            await self._change(
                "INSERT OR IGNORE INTO job_runs (job_id, fire_time, status, started_at, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, fire_time, status, self._clock.now(), detail),
            )
            > 0
        )

    async def finish_run(self, job_id: str, fire_time: int, status: str, detail: str = "") -> None:
        await self._write(
            "UPDATE job_runs SET status = ?, finished_at = ?, detail = ?"
            " WHERE job_id = ? AND fire_time = ?",
            (status, self._clock.now(), detail, job_id, fire_time),
        )

    async def last_run(self, job_id: str) -> RunRecord | None:
        """The ledger row with the latest fire time of a job."""
        row = await self._read_one(
            f"{_RUN_SELECT} WHERE job_id = ? ORDER BY fire_time DESC LIMIT 1", (job_id,)
        )
        return None if row is None else RunRecord(*row)

    async def job_runs(self, job_id: str, limit: int = 20) -> list[RunRecord]:
        """A job's most recent ledger rows, oldest first."""
        rows = await self._read(
            f"{_RUN_SELECT} WHERE job_id = ? ORDER BY fire_time DESC LIMIT ?", (job_id, limit)
        )
        return [RunRecord(*row) for row in reversed(rows)]

    async def interrupt_running_runs(self) -> int:
        """At start: runs left 'running' by a crash are over (and never delivered again)."""
        return await self._change(
            "UPDATE job_runs SET status = 'interrupted', finished_at = ? WHERE status = 'running'",
            (self._clock.now(),),
        )

    async def prune_job_runs(self, older_than_s: float) -> int:
        """Drop old ledger rows, keeping each job's latest (the catch-up starts from it)."""
        cutoff = self._clock.now() - older_than_s
        return await self._change(
            "DELETE FROM job_runs WHERE started_at < ? AND fire_time < ("
            " SELECT max(fire_time) FROM job_runs AS newer WHERE newer.job_id = job_runs.job_id)",
            (cutoff,),
        )


def _run_batch(db: sqlite3.Connection, works: Sequence[Work[Any]]) -> list[Any]:
    """On the worker: one transaction for all ``works``; a work failing on its own gets a
    _Failed outcome and the rest commits, a store that cannot commit fails them all."""
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [_run_one(db, work) for work in works]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


def _run_one(db: sqlite3.Connection, work: Work[Any]) -> Any:
    try:
        return work(db)
    except sqlite3.Error as exc:
        if _unavailable(exc) or not db.in_transaction:
            raise
        return _Failed(StoreError(f"cannot write to the store: {exc}"))
    except Exception as exc:  # a bug in one write fails that write, not its batch
        return _Failed(exc)


def _probe(db: sqlite3.Connection) -> None:
    """A commit that needs new pages and leaves nothing behind."""
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    page = int(db.execute("PRAGMA page_size").fetchone()[0])
    size = min((free + PROBE_GROWTH_PAGES) * page, PROBE_MAX_BYTES)
    cursor = db.execute(
        "INSERT INTO audit (at, actor, room, action, detail) VALUES (0, '', '', 'store.probe',"
        " zeroblob(?))",
        (size,),
    )
    db.execute("DELETE FROM audit WHERE id = ?", (cursor.lastrowid,))


@contextlib.contextmanager
def _savepoint(db: sqlite3.Connection) -> Iterator[None]:
    """All of a multi-statement write or none of it, inside the batch's transaction."""
    db.execute("SAVEPOINT work")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK TO work")
            db.execute("RELEASE work")
        raise
    db.execute("RELEASE work")


def _unavailable(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in UNAVAILABLE_CODES


def _refuse(entries: Sequence[_Write], error: type[StoreError], message: str) -> None:
    """Each waiting caller gets its own exception (a shared one would mix tracebacks)."""
    for entry in entries:
        if not entry.done.done():
            entry.done.set_exception(error(message))


def _raise_replay_floors(db: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Before rows go, each room's floor rises to the highest message id among them: the
    row that made a replay a no-op is gone, the floor keeps doing it (H03)."""
    floors: dict[str, int] = {}
    marks = ", ".join("?" for _ in ids)
    rows = db.execute(
        f"SELECT room, dedupe_key FROM inbox WHERE id IN ({marks})"  # noqa: S608 - placeholders only
        " AND kind IN (?, ?) AND dedupe_key IS NOT NULL",
        (*ids, *_FLOORED_KINDS),
    )
    for room, key in rows:
        number = str(key).rpartition(":")[2]
        if number.isdigit():
            floors[room] = max(floors.get(room, 0), int(number))
    db.executemany(
        "INSERT INTO replay_floor (room, message_id) VALUES (?, ?) ON CONFLICT (room)"
        " DO UPDATE SET message_id = max(message_id, excluded.message_id)",
        sorted(floors.items()),
    )


def _lock(path: Path) -> int:
    """One daemon per store (R12): a second process on the same file refuses to start."""
    lock_path = Path(f"{path}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the lock file {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"the store {path} is in use by another talkbot process") from None
    return fd


def _inbox_item(row: sqlite3.Row) -> InboxItem:
    return InboxItem(
        id=row["id"],
        room=row["room"],
        kind=row["kind"],
        body=str(row["body"]).encode("utf-8"),
        received_at=row["received_at"],
        attempts=row["attempts"],
    )


_JOB_SELECT = (
    "SELECT id, owner, room, kind, expr, timezone, message, prompt, created_by_role, paused,"
    " misfire, source, created_at, active_since, origin_room FROM jobs"
)
_RUN_SELECT = "SELECT job_id, fire_time, status, started_at, finished_at, detail FROM job_runs"


def _job(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["paused"] = bool(values["paused"])
    return JobRecord(**values)


_PENDING_COLUMNS = (
    "id, code, turn_id, call_id, room, requester, requester_name, tool, args_json, args_hash,"
    " approver, state_json, after_message_id, prompt_text, created_at, expires_at, status,"
    " decided_by, result_text, updated_at"
)


def _insert_pending(db: sqlite3.Connection, action: NewPendingAction, now: float) -> int:
    cursor = db.execute(
        "INSERT INTO pending_actions (code, turn_id, call_id, room, requester, requester_name,"
        " tool, args_json, args_hash, approver, state_json, after_message_id, created_at,"
        " expires_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            action.code,
            action.turn_id,
            action.call_id,
            action.room,
            action.requester,
            action.requester_name,
            action.tool,
            action.args_json,
            action.args_hash,
            action.approver,
            action.state_json,
            action.after_message_id,
            now,
            action.expires_at,
            now,
        ),
    )
    return int(cursor.lastrowid or 0)


def _room(row: sqlite3.Row) -> RoomRecord:
    return RoomRecord(
        token=row["token"],
        name=row["name"],
        one_to_one=bool(row["one_to_one"]),
        mode=row["mode"],
        joined=bool(row["joined"]),
        last_seen=row["last_seen"],
    )
