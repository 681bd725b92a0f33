"""The one store: inbox, rooms, history, roles, confirmations, jobs and audit, in SQLite.

Callers speak in the product's terms; nothing outside this module sees SQL. Every method
is a coroutine so a networked backend can stand behind the same interface later. The
SQLite calls are short and run on the event loop thread (WAL, synchronous=NORMAL: a
commit survives a crash of the process).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.clock import Clock
from bot.errors import StoreError

RANDOM_RETENTION_S = 14 * 24 * 3600

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS inbox_open ON inbox (status, room, id);

CREATE TABLE IF NOT EXISTS seen_randoms (
    random TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS rooms (
    token TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    one_to_one INTEGER NOT NULL DEFAULT 0,
    mode TEXT,
    joined INTEGER NOT NULL DEFAULT 1,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    role TEXT NOT NULL,
    actor_id TEXT NOT NULL DEFAULT '',
    actor_name TEXT NOT NULL DEFAULT '',
    content TEXT NOT NULL,
    message_id TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_room ON history (room, id);

CREATE TABLE IF NOT EXISTS role_overrides (
    uid TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    set_by TEXT NOT NULL,
    set_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    room TEXT NOT NULL,
    action TEXT NOT NULL,
    tool TEXT NOT NULL DEFAULT '',
    args_hash TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
"""


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


class Store:
    """The durable state of one talkbot process; ``open`` takes an exclusive lock."""

    def __init__(self, db: sqlite3.Connection, clock: Clock, lock_fd: int | None) -> None:
        self._db = db
        self._clock = clock
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, path: Path, clock: Clock) -> Store:
        lock_fd = None if str(path) == ":memory:" else _lock(path)
        try:
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
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
        self, *, room: str, kind: str, body: bytes, random: str, dedupe_key: str | None
    ) -> int | None:
        """Store a verified webhook; None when its random or key was seen before."""
        now = self._clock.now()
        with self._transaction() as db:
            try:
                db.execute(
                    "INSERT INTO seen_randoms (random, seen_at) VALUES (?, ?)", (random, now)
                )
            except sqlite3.IntegrityError:
                return None
            if dedupe_key is not None:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO inbox (room, dedupe_key, kind, body, received_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (room, dedupe_key, kind, body.decode("utf-8"), now),
                )
            else:
                cursor = db.execute(
                    "INSERT INTO inbox (room, kind, body, received_at) VALUES (?, ?, ?, ?)",
                    (room, kind, body.decode("utf-8"), now),
                )
            if cursor.rowcount == 0:
                return None
            return cursor.lastrowid

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
        self._db.execute(
            "UPDATE inbox SET status = 'running', attempts = attempts + 1 WHERE id = ?",
            (event_id,),
        )

    async def finish_event(self, event_id: int, status: str = "done", error: str = "") -> None:
        self._db.execute(
            "UPDATE inbox SET status = ?, finished_at = ?, error = ? WHERE id = ?",
            (status, self._clock.now(), error, event_id),
        )

    async def inbox_backlog(self) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM inbox WHERE status IN ('pending', 'running')"
        ).fetchone()
        return int(row[0])

    async def event_status(self, event_id: int) -> str | None:
        row = self._db.execute("SELECT status FROM inbox WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else str(row[0])

    async def purge(self, *, randoms_older_than_s: float = RANDOM_RETENTION_S) -> None:
        cutoff = self._clock.now() - randoms_older_than_s
        with self._transaction() as db:
            db.execute("DELETE FROM seen_randoms WHERE seen_at < ?", (cutoff,))
            db.execute(
                "UPDATE inbox SET body = '' WHERE status NOT IN ('pending', 'running')"
                " AND finished_at < ?",
                (cutoff,),
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
        self._db.execute(
            "INSERT INTO history (room, role, actor_id, actor_name, content, message_id,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                room,
                entry.role,
                entry.actor_id,
                entry.actor_name,
                entry.content,
                entry.message_id,
                entry.created_at or self._clock.now(),
            ),
        )

    async def recent_history(self, room: str, limit: int) -> list[HistoryEntry]:
        """The last ``limit`` entries of a room, oldest first."""
        rows = self._db.execute(
            "SELECT role, content, actor_id, actor_name, message_id, created_at FROM history"
            " WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, limit),
        ).fetchall()
        return [HistoryEntry(*row) for row in reversed(rows)]

    async def forget_history(self, room: str) -> int:
        cursor = self._db.execute("DELETE FROM history WHERE room = ?", (room,))
        return cursor.rowcount

    async def trim_history(self, room: str, keep: int) -> None:
        self._db.execute(
            "DELETE FROM history WHERE room = ? AND id NOT IN"
            " (SELECT id FROM history WHERE room = ? ORDER BY id DESC LIMIT ?)",
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

    # -- counters (small persisted facts: last webhook, turns) ------------------------

    async def set_value(self, name: str, value: float) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    async def get_value(self, name: str) -> float | None:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return None if row is None else float(row[0])


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


def _room(row: sqlite3.Row) -> RoomRecord:
    return RoomRecord(
        token=row["token"],
        name=row["name"],
        one_to_one=bool(row["one_to_one"]),
        mode=row["mode"],
        joined=bool(row["joined"]),
        last_seen=row["last_seen"],
    )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
