"""The embedded backend: one SQLite file, one talkbot process.

WAL with ``synchronous=FULL`` by default: a commit, once acknowledged, survives a power
loss, since the WAL is synced at each (group) commit; ``[storage] synchronous = "normal"``
survives a crash of the process only, and saves the sync (bench/README.md). A lock file
beside the store keeps a second daemon away (R12); several replicas need PostgreSQL
(bot/store/postgres.py). Waits for another connection's lock are short (BUSY_TIMEOUT_MS)
and on the store's worker thread; a locked or full file is "not now" (H04).

Checkpoints never run inside a commit (#19, H07). SQLite's own autocheckpoint would copy
the WAL into the database file, and sync it, within the COMMIT that crosses 1000 pages,
so every webhook of that group commit would wait for it. Here the write connection's is
raised to BACKSTOP_PAGES, which only a failing checkpointer lets the WAL reach, and a
``Checkpointer`` thread with its own connection copies the WAL meanwhile (PASSIVE: it
never blocks the writer). A WAL only starts over once everything in it is
copied and a writer begins; under sustained writes the thread never quite catches up, so
once the WAL passes WAL_SOFT_LIMIT_BYTES the writer itself copies the little that is left
before its next transaction, and that transaction starts the WAL over: the WAL stays near
the limit however long the load lasts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from bot.clock import Clock
from bot.errors import StoreError
from bot.store.engine import Conflict, Cursor, Dialect, Row, Tx, Work
from bot.store.migrations import Upgrade, migrate

log = structlog.get_logger(__name__)

T = TypeVar("T")

# H04: how long one attempt waits for another connection's lock, on the worker thread.
Synchronous = Literal["full", "normal"]
_SYNCHRONOUS: dict[str, str] = {"full": "FULL", "normal": "NORMAL"}  # PRAGMA values, fixed
BUSY_TIMEOUT_MS = 200
# The probe writes (and deletes in the same commit) a row that fills the free pages and
# needs this many more, so it grows the file like a long message would: a full disk (or
# SQLite's max_page_count) fails it too. Capped: a freelist that big is room enough.
PROBE_GROWTH_PAGES = 4
PROBE_MAX_BYTES = 1024 * 1024
MAX_PAGE_COUNT = 0xFFFFFFFE  # SQLite's own ceiling: "no limit"
# SQLite result codes that mean "not now" rather than "this statement is wrong": busy,
# locked, no memory, read-only, I/O error, full, cannot open, lock protocol.
UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
# SQLITE_CONSTRAINT_PRIMARYKEY and SQLITE_CONSTRAINT_UNIQUE: a key that is already there.
CONFLICT_CODES = frozenset({1555, 2067})
# While commits come in, the checkpointer copies the WAL this long after the first of them,
# or as soon as the WAL file passes WAL_SOFT_LIMIT_BYTES (it looks every WAL_POLL_S).
CHECKPOINT_INTERVAL_S = 0.2
WAL_POLL_S = 0.01
# Past this size the writer finishes the copy and the WAL starts over (about SQLite's own
# autocheckpoint threshold of 1000 pages); a restarted WAL file is cut back to it.
WAL_SOFT_LIMIT_BYTES = 4 * 1024 * 1024
WAL_FRAME_HEADER = 24  # bytes before each page in the WAL
# SQLite's own autocheckpoint stays on for the write connection, far above the soft limit:
# a backstop that bounds the WAL should the checkpointer fail (it then runs in a commit).
BACKSTOP_PAGES = 4096


class SqliteDriver:
    """The connection to one SQLite file, used only on the engine's worker thread."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        lock_fd: int | None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._db = db
        self._path = path
        self._lock_fd = lock_fd
        self._checkpointer = checkpointer

    @classmethod
    def open(
        cls, path: Path, clock: Clock, *, synchronous: Synchronous = "full"
    ) -> tuple[SqliteDriver, Upgrade]:
        """Lock, open (or create) and upgrade the store; synchronous, once at start."""
        lock_fd = None if str(path) == ":memory:" else _lock(path)
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[synchronous]}")
            db.execute("PRAGMA busy_timeout=5000")  # at start only: nothing waits on us yet
            upgrade = migrate(db, path, clock)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.row_factory = _dict_row
            checkpointer = None
            if str(path) != ":memory:":
                db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")  # see BACKSTOP
                db.execute(f"PRAGMA journal_size_limit={WAL_SOFT_LIMIT_BYTES}")
                checkpointer = Checkpointer.start(path, _SYNCHRONOUS[synchronous])
        except (sqlite3.Error, StoreError) as exc:
            if db is not None:
                db.close()
            if lock_fd is not None:
                os.close(lock_fd)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        return cls(db, path, lock_fd, checkpointer), upgrade

    @property
    def location(self) -> str:
        return str(self._path)

    def synchronous(self) -> Synchronous | str:
        """What SQLite itself says of the connection's durability ("full", "normal")."""
        row = self._db.execute("PRAGMA synchronous").fetchone()  # a dict (_dict_row)
        level = int(row["synchronous"])
        return {2: "full", 1: "normal"}.get(level, str(level))

    def transaction(self, work: Work[T]) -> T:
        if self._checkpointer is not None and self._checkpointer.wal_is_long:
            self._finish_checkpoint()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(_SqliteTx(self._db))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        if self._checkpointer is not None:
            self._checkpointer.committed()
        return result

    def _finish_checkpoint(self) -> None:
        """Copy what the checkpointer has not yet (little: it copied the rest meanwhile),
        so that the transaction about to begin starts the WAL over."""
        assert self._checkpointer is not None  # noqa: S101 - the caller checked
        try:
            row = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the commit after it tells the store's state
            self._checkpointer.failed(exc)
            self._checkpointer.caught_up(busy=True)  # the thread tries again meanwhile
            return
        self._checkpointer.caught_up(busy=bool(row["busy"]))

    def read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        return list(self._db.execute(sql, tuple(params)).fetchall())

    def probe(self) -> None:
        self.transaction(_probe)

    def is_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.Error)

    def unavailable(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in UNAVAILABLE_CODES

    def transient(self, exc: BaseException) -> bool:  # noqa: ARG002 - the protocol's
        return False  # one writer: a lock held elsewhere is "not now" (busy), not a race

    def checkpoints(self) -> tuple[int, int, int]:
        """Test hook: the checkpointer's passes, the WAL's restarts after the writer's copy,
        and the write connection's own autocheckpoint threshold (0: off)."""
        row = self._db.execute("PRAGMA wal_autocheckpoint").fetchone()
        auto = int(row["wal_autocheckpoint"])
        if self._checkpointer is None:
            return 0, 0, auto
        return self._checkpointer.passes, self._checkpointer.restarts, auto

    def limit_growth(self, pages: int | None) -> None:
        """Test hook: the file may grow by ``pages`` pages more, after which every write
        that needs a page fails with SQLITE_FULL exactly as on a full disk; None lifts it."""
        size = int(self._db.execute("PRAGMA page_count").fetchone()["page_count"])
        top = MAX_PAGE_COUNT if pages is None else size + pages
        self._db.execute(f"PRAGMA max_page_count = {int(top)}")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()  # first: the last connection to close removes the WAL
            self._checkpointer = None
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class Checkpointer:
    """A thread with its own connection that copies the WAL into the database file while
    the writer goes on (PASSIVE checkpoints): commits never wait for that copy or its
    sync. It asks the writer to finish the copy once the WAL is long (``wal_is_long``)."""

    def __init__(self, db: sqlite3.Connection, wal: Path) -> None:
        self._db = db
        self._wal = wal
        self._frame = WAL_FRAME_HEADER + int(db.execute("PRAGMA page_size").fetchone()[0])
        self._commits = threading.Event()
        self._stopping = threading.Event()
        self._long = threading.Event()
        self._caught_up = threading.Event()
        self._failing = False
        self.passes = 0
        self.restarts = 0  # times the writer finished a copy so the WAL could start over
        self._thread = threading.Thread(target=self._run, name="talkbot-checkpoint", daemon=True)

    @classmethod
    def start(cls, path: Path, synchronous: str) -> Checkpointer:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA busy_timeout=0")  # a PASSIVE checkpoint never waits anyway
            checkpointer = cls(db, Path(f"{path}-wal"))
        except sqlite3.Error:
            db.close()
            raise
        checkpointer._thread.start()
        return checkpointer

    @property
    def wal_is_long(self) -> bool:
        return self._long.is_set()

    def committed(self) -> None:
        """The writer committed: there is WAL to copy (on the writer's thread, cheap)."""
        self._commits.set()

    def caught_up(self, *, busy: bool) -> None:
        """The writer copied the rest; its next transaction starts the WAL over."""
        if not busy:
            self.restarts += 1
        self._long.clear()
        self._caught_up.set()

    def failed(self, exc: sqlite3.Error) -> None:
        """A copy failed (the thread's or the writer's): one line per outage."""
        if not self._failing:
            log.warning("store.checkpoint_failed", reason=str(exc))
        self._failing = True

    def stop(self) -> None:
        self._stopping.set()
        self._commits.set()
        self._caught_up.set()
        self._thread.join()
        self._db.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._commits.wait()
            self._commits.clear()
            if not self._gather():
                return
            self._copy()
            if self._long.is_set():
                # The writer copies the rest before its next commit; this thread keeps
                # out of its way until it has (or the store stops).
                self._caught_up.wait()
                self._caught_up.clear()

    def _gather(self) -> bool:
        """Let commits gather for CHECKPOINT_INTERVAL_S, less if the WAL grows past its
        soft limit meanwhile (a restarted WAL file is cut back to that size, so a larger
        file has that much new in it); False when the store stops."""
        waited = 0.0
        while waited < CHECKPOINT_INTERVAL_S:
            if self._stopping.wait(WAL_POLL_S):
                return False
            waited += WAL_POLL_S
            with contextlib.suppress(OSError):
                if self._wal.stat().st_size > WAL_SOFT_LIMIT_BYTES:
                    break
        return True

    def _copy(self) -> None:
        try:
            row = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self.failed(exc)
            self._commits.set()  # try again after the interval
            return
        self._failing = False
        self.passes += 1
        if int(row[1]) * self._frame >= WAL_SOFT_LIMIT_BYTES:
            self._long.set()


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @property
    def dialect(self) -> Dialect:
        return "sqlite"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self._db.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorcode", None) in CONFLICT_CODES:
                raise Conflict(str(exc)) from exc
            raise

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self._db.execute("SAVEPOINT work")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK TO work")
                self._db.execute("RELEASE work")
            raise
        self._db.execute("RELEASE work")


def _probe(tx: Tx) -> None:
    """A commit that needs new pages and leaves nothing behind."""
    free = int(tx.execute("PRAGMA freelist_count").fetchall()[0]["freelist_count"])
    page = int(tx.execute("PRAGMA page_size").fetchall()[0]["page_size"])
    size = min((free + PROBE_GROWTH_PAGES) * page, PROBE_MAX_BYTES)
    [row] = tx.execute(
        "INSERT INTO audit (at, actor, room, action, detail) VALUES (0, '', '', 'store.probe',"
        " zeroblob(?)) RETURNING id",
        (size,),
    ).fetchall()
    tx.execute("DELETE FROM audit WHERE id = ?", (row["id"],))


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


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
