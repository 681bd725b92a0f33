"""The one store: inbox, rooms, history, roles, confirmations, jobs and audit, in SQLite.

Callers speak in the product's terms; nothing outside this module sees SQL. Every method
is a coroutine so a networked backend can stand behind the same interface later. The
SQLite calls are short and run on the event loop thread (WAL, synchronous=NORMAL: a
commit survives a crash of the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from bot.clock import Clock
from bot.errors import StoreError
from bot.migrations import migrate

log = structlog.get_logger(__name__)

BODY_RETENTION_S = 14 * 24 * 3600
ROW_RETENTION_S = 180 * 24 * 3600

# The schema (tables, columns, indexes) is built and upgraded by bot/migrations.py;
# docs/store.md describes each version.

# A message at or below its room's replay floor was accepted before and purged since:
# the row is not inserted, so the webhook is a repeat (H03).
INSERT_EVENT = (
    "INSERT OR IGNORE INTO inbox (room, dedupe_key, random, kind, body, received_at)"
    " SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
    " (SELECT 1 FROM replay_floor WHERE room = ? AND message_id >= ?)"
)
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


class Store:
    """The durable state of one talkbot process; ``open`` takes an exclusive lock."""

    def __init__(self, db: sqlite3.Connection, clock: Clock, lock_fd: int | None) -> None:
        self._db = db
        self._clock = clock
        self._lock_fd = lock_fd
        # Writes made in the same event-loop tick share one commit (group commit).
        self._batch: list[tuple[str, tuple[Any, ...], asyncio.Future[int | None]]] = []

    @classmethod
    def open(cls, path: Path, clock: Clock) -> Store:
        """Open (or create) the store, upgrading its schema to this code's version."""
        lock_fd = None if str(path) == ":memory:" else _lock(path)
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            upgrade = migrate(db, path, clock)
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
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def clock(self) -> Clock:
        return self._clock

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
        """
        row = (room, dedupe_key, random, kind, body.decode("utf-8"), self._clock.now())
        return await self._write(INSERT_EVENT, (*row, room, message_id))

    async def _write(self, sql: str, params: tuple[Any, ...]) -> int | None:
        """One statement, committed together with the others of this loop tick.

        Returns the new row id, or None when the statement changed nothing (an ignored
        duplicate). It returns only after the commit, so what it wrote is durable.
        """
        done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._batch.append((sql, params, done))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._commit_batch)
        return await done

    def _commit_batch(self) -> None:
        batch, self._batch = self._batch, []
        try:
            with self._transaction() as db:
                ids = [
                    cursor.lastrowid if cursor.rowcount else None
                    for cursor in (db.execute(sql, params) for sql, params, _ in batch)
                ]
        except sqlite3.Error as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(StoreError(f"cannot write to the store: {exc}"))
            return
        for (_, _, done), row_id in zip(batch, ids, strict=True):
            if not done.done():
                done.set_result(row_id)

    async def open_events(self) -> list[InboxItem]:
        """Everything accepted and not finished, oldest first (resumed after a restart)."""
        rows = self._db.execute(
            "SELECT id, room, kind, body, received_at, attempts FROM inbox"
            " WHERE status IN ('pending', 'running') ORDER BY id"
        )
        return [_inbox_item(row) for row in rows]

    async def get_event(self, event_id: int) -> InboxItem | None:
        row = self._db.execute(
            "SELECT id, room, kind, body, received_at, attempts FROM inbox WHERE id = ?",
            (event_id,),
        ).fetchone()
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
        with self._transaction() as db:
            db.executemany(
                "UPDATE inbox SET status = 'dropped', finished_at = ?, error = ? WHERE id = ?",
                [(self._clock.now(), reason, event_id) for event_id in event_ids],
            )

    async def inbox_backlog(self, *, waiting_only: bool = False) -> int:
        """Accepted events not finished; ``waiting_only``: those not started yet."""
        statuses = "('pending')" if waiting_only else "('pending', 'running')"
        row = self._db.execute(
            f"SELECT count(*) FROM inbox WHERE status IN {statuses}"  # noqa: S608 - two fixed fragments
        ).fetchone()
        return int(row[0])

    async def seen_any(self, dedupe_keys: Sequence[str]) -> bool:
        """Whether an event with one of these keys was accepted (and not yet purged)."""
        marks = ", ".join("?" for _ in dedupe_keys)
        row = self._db.execute(
            f"SELECT 1 FROM inbox WHERE dedupe_key IN ({marks}) LIMIT 1",  # noqa: S608 - placeholders only
            tuple(dedupe_keys),
        ).fetchone()
        return row is not None

    async def event_status(self, event_id: int) -> str | None:
        row = self._db.execute("SELECT status FROM inbox WHERE id = ?", (event_id,)).fetchone()
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
        with self._transaction() as db:
            db.execute(
                "UPDATE inbox SET body = '' WHERE status NOT IN ('pending', 'running')"
                " AND received_at < ? AND body != ''",
                (now - bodies_older_than_s,),
            )
            _raise_replay_floors(db, now - rows_older_than_s)
            db.execute(
                "DELETE FROM inbox WHERE status NOT IN ('pending', 'running') AND received_at < ?",
                (now - rows_older_than_s,),
            )

    # -- rooms -----------------------------------------------------------------------

    async def record_room(
        self, token: str, *, name: str, one_to_one: bool, joined: bool | None = None
    ) -> None:
        now = self._clock.now()
        self._db.execute(
            "INSERT INTO rooms (token, name, one_to_one, joined, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO UPDATE SET"
            " name = excluded.name, one_to_one = excluded.one_to_one,"
            " joined = CASE WHEN ? IS NULL THEN rooms.joined ELSE excluded.joined END,"
            " last_seen = excluded.last_seen",
            (token, name, int(one_to_one), 1 if joined is None else int(joined), now, now, joined),
        )

    async def get_room(self, token: str) -> RoomRecord | None:
        row = self._db.execute(
            "SELECT token, name, one_to_one, mode, joined, last_seen FROM rooms WHERE token = ?",
            (token,),
        ).fetchone()
        return None if row is None else _room(row)

    async def list_rooms(self) -> list[RoomRecord]:
        rows = self._db.execute(
            "SELECT token, name, one_to_one, mode, joined, last_seen FROM rooms ORDER BY token"
        )
        return [_room(row) for row in rows]

    async def set_room_mode(self, token: str, mode: str | None) -> None:
        now = self._clock.now()
        self._db.execute(
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
        rows = self._db.execute(
            "SELECT role, content, actor_id, actor_name, message_id, created_at, provenance"
            " FROM history"
            " WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, limit),
        ).fetchall()
        return [HistoryEntry(*row) for row in reversed(rows)]

    async def forget_history(self, room: str) -> int:
        cursor = self._db.execute("DELETE FROM history WHERE room = ?", (room,))
        return cursor.rowcount

    async def trim_history(self, room: str, keep: int) -> None:
        """Keep a room's newest ``keep`` rows; the index walks only those (H06)."""
        self._db.execute(
            "DELETE FROM history WHERE room = ? AND id <= (SELECT id FROM history"
            " WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (room, room, keep),
        )

    # -- roles -----------------------------------------------------------------------

    async def set_role_override(self, uid: str, role: str, *, set_by: str) -> None:
        self._db.execute(
            "INSERT INTO role_overrides (uid, role, set_by, set_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (uid) DO UPDATE SET role = excluded.role, set_by = excluded.set_by,"
            " set_at = excluded.set_at",
            (uid, role, set_by, self._clock.now()),
        )

    async def remove_role_override(self, uid: str) -> bool:
        return self._db.execute("DELETE FROM role_overrides WHERE uid = ?", (uid,)).rowcount > 0

    async def role_overrides(self) -> dict[str, RoleOverride]:
        rows = self._db.execute("SELECT uid, role, set_by, set_at FROM role_overrides")
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
        self._db.execute(
            "INSERT INTO audit (at, actor, room, action, tool, args_hash, outcome, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self._clock.now(), actor, room, action, tool, args_hash, outcome, detail),
        )

    async def recent_audit(self, limit: int = 50) -> list[AuditEntry]:
        rows = self._db.execute(
            "SELECT at, actor, room, action, tool, args_hash, outcome, detail FROM audit"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [AuditEntry(*row) for row in reversed(rows)]

    # -- confirmations (pending actions) ----------------------------------------------

    async def create_pending(
        self, actions: Sequence[NewPendingAction]
    ) -> list[PendingAction] | None:
        """Store the pending actions of one turn together; None if a code is already open."""
        now = self._clock.now()
        try:
            with self._transaction() as db:
                ids = [_insert_pending(db, action, now) for action in actions]
        except sqlite3.IntegrityError:
            return None
        return [action for action_id in ids if (action := await self.get_pending(action_id))]

    async def get_pending(self, action_id: int) -> PendingAction | None:
        found = self._pending_where("id = ?", (action_id,))
        return found[0] if found else None

    async def pending_by_code(self, code: str) -> PendingAction | None:
        """The action with this code: the open one, else the latest that had it."""
        found = self._pending_where(
            "code = ? ORDER BY status IN ('pending', 'approved', 'running') DESC, id DESC LIMIT 1",
            (code.upper(),),
        )
        return found[0] if found else None

    async def open_pending(self, room: str) -> list[PendingAction]:
        """Actions in a room still waiting for an answer (expired or not), oldest first."""
        return self._pending_where("room = ? AND status = 'pending' ORDER BY id", (room,))

    async def list_open_pending(self) -> list[PendingAction]:
        """Every action not finished yet, in every room, oldest first (for !pending)."""
        return self._pending_where("status IN ('pending', 'approved', 'running') ORDER BY id", ())

    async def interrupted_pending(self) -> list[PendingAction]:
        """Actions approved or running when the process stopped (never re-run, A10)."""
        return self._pending_where("status IN ('approved', 'running') ORDER BY id", ())

    async def set_pending_prompt(self, action_id: int, prompt_text: str) -> None:
        self._db.execute(
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
        return self._db.execute(sql, params).rowcount == 1

    async def claim_turn_resume(self, turn_id: str) -> list[PendingAction] | None:
        """All actions of a turn, once, when none is open any more; else None."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT count(*) FROM pending_actions WHERE turn_id = ?"
                " AND status IN ('pending', 'approved', 'running')",
                (turn_id,),
            ).fetchone()
            if int(row[0]) > 0:
                return None
            claimed = db.execute(
                "UPDATE pending_actions SET resumed = 1 WHERE turn_id = ? AND resumed = 0",
                (turn_id,),
            )
            if claimed.rowcount == 0:
                return None
        return self._pending_where("turn_id = ? ORDER BY id", (turn_id,))

    def _pending_where(self, where: str, params: Sequence[Any]) -> list[PendingAction]:
        rows = self._db.execute(
            f"SELECT {_PENDING_COLUMNS} FROM pending_actions WHERE {where}",  # noqa: S608 - fixed fragments, values bound
            tuple(params),
        ).fetchall()
        return [PendingAction(**dict(zip(row.keys(), row, strict=True))) for row in rows]

    # -- schedules (jobs and run ledger) ------------------------------------------------

    async def save_job(self, job: JobRecord) -> None:
        """Insert or replace a job definition by id."""
        self._db.execute(
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
        row = self._db.execute(f"{_JOB_SELECT} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    async def list_jobs(
        self, *, owner: str | None = None, source: str | None = None, room: str | None = None
    ) -> list[JobRecord]:
        """Jobs ordered by id, optionally only one owner's, one source's or one room's."""
        rows = self._db.execute(
            f"{_JOB_SELECT} WHERE (? IS NULL OR owner = ?) AND (? IS NULL OR source = ?)"
            " AND (? IS NULL OR room = ?) ORDER BY id",
            (owner, owner, source, source, room, room),
        )
        return [_job(row) for row in rows]

    async def delete_job(self, job_id: str) -> bool:
        """Remove a definition; its ledger rows stay, so a reused id never re-runs a fire time."""
        return self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    async def claim_run(
        self, job_id: str, fire_time: int, *, status: str = "running", detail: str = ""
    ) -> bool:
        """Enter a fire time in the ledger; False when it is there already (never run twice)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO job_runs (job_id, fire_time, status, started_at, detail)"
            " VALUES (?, ?, ?, ?, ?)",
            (job_id, fire_time, status, self._clock.now(), detail),
        )
        return cursor.rowcount > 0

    async def finish_run(self, job_id: str, fire_time: int, status: str, detail: str = "") -> None:
        self._db.execute(
            "UPDATE job_runs SET status = ?, finished_at = ?, detail = ?"
            " WHERE job_id = ? AND fire_time = ?",
            (status, self._clock.now(), detail, job_id, fire_time),
        )

    async def last_run(self, job_id: str) -> RunRecord | None:
        """The ledger row with the latest fire time of a job."""
        row = self._db.execute(
            f"{_RUN_SELECT} WHERE job_id = ? ORDER BY fire_time DESC LIMIT 1", (job_id,)
        ).fetchone()
        return None if row is None else RunRecord(*row)

    async def job_runs(self, job_id: str, limit: int = 20) -> list[RunRecord]:
        """A job's most recent ledger rows, oldest first."""
        rows = self._db.execute(
            f"{_RUN_SELECT} WHERE job_id = ? ORDER BY fire_time DESC LIMIT ?", (job_id, limit)
        ).fetchall()
        return [RunRecord(*row) for row in reversed(rows)]

    async def interrupt_running_runs(self) -> int:
        """At start: runs left 'running' by a crash are over (and never delivered again)."""
        cursor = self._db.execute(
            "UPDATE job_runs SET status = 'interrupted', finished_at = ? WHERE status = 'running'",
            (self._clock.now(),),
        )
        return cursor.rowcount

    async def prune_job_runs(self, older_than_s: float) -> int:
        """Drop old ledger rows, keeping each job's latest (the catch-up starts from it)."""
        cutoff = self._clock.now() - older_than_s
        cursor = self._db.execute(
            "DELETE FROM job_runs WHERE started_at < ? AND fire_time < ("
            " SELECT max(fire_time) FROM job_runs AS newer WHERE newer.job_id = job_runs.job_id)",
            (cutoff,),
        )
        return cursor.rowcount


def _raise_replay_floors(db: sqlite3.Connection, before: float) -> None:
    """Before rows go, each room's floor rises to the highest message id among them: the
    row that made a replay a no-op is gone, the floor keeps doing it (H03)."""
    floors: dict[str, int] = {}
    rows = db.execute(
        "SELECT room, dedupe_key FROM inbox WHERE status NOT IN ('pending', 'running')"
        " AND received_at < ? AND kind IN (?, ?) AND dedupe_key IS NOT NULL",
        (before, *_FLOORED_KINDS),
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
