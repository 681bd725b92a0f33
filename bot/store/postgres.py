"""The shared backend: PostgreSQL, for several talkbot replicas on one database.

Driver: psycopg 3 (``psycopg[binary]``), used synchronously on the store's worker thread,
exactly as the SQLite backend uses its connection: the same engine (bot/store/engine.py)
group-commits the writes of one loop tick, and the same aggregate code runs on both.

Chosen by measurement and maintenance (bench/pg_driver.py; figures in bench/README.md,
"PostgreSQL driver"). Acknowledging a webhook means one committed INSERT; with fsync on,
at 32 concurrent callers, group commit is what matters, not the driver: asyncpg with
group commit did ~33k acks/s, psycopg on one thread with group commit ~29k (0.89x), the
same psycopg on the event loop ~28k (so the thread costs nothing measurable), and
asyncpg's pool without group commit ~11k (one fsync per ack). asyncpg spends less client
CPU per ack (9 vs 20 us) and imports lighter (3 vs 11 MiB); neither matters next to a
model turn. psycopg wins on what does: its synchronous API lets one engine and one copy
of each aggregate serve both backends (asyncpg is async only); it is libpq, so a
``[storage] url`` means what it means to ``psql`` (service files, ``sslmode``, Unix
sockets, ``PGPASSFILE``); it is the PostgreSQL adapter most Python projects use, kept by
the psycopg project with binary wheels for each release. Known headroom (#19): the
engine sends one statement per write; executemany or pipeline mode for a batch of
inserts measured 2.2-2.7x more acks/s.

Errors: a lost connection, a server shutting down, a full disk, a lock or statement
timeout, a serialization failure are "not now" (the write waits and is tried again; the
store goes unhealthy, H04); the connection is opened again on the next attempt.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import DictRow, dict_row

from bot.config import strip_credentials
from bot.errors import StoreError, StoreVersionError
from bot.store.engine import Conflict, Cursor, Dialect, Row, Tx, Work
from bot.store.migrations import Upgrade
from bot.store.postgres_baseline import POSTGRES_BASELINE, POSTGRES_SCHEMA_AT_BASELINE
from bot.store.steps import MIGRATIONS, Migration

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
# Server-side limits of every statement: a lock held elsewhere makes a write "not now"
# after 2 s (as SQLite's busy timeout does), nothing runs longer than 30 s, and a
# transaction left open by a stuck process is ended by the server.
SESSION_OPTIONS = (
    "-c lock_timeout=2000 -c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000"
)
# Two replicas starting at once: the second waits for the first one's upgrade.
MIGRATION_LOCK = 0x7A1C_B075
# The probe writes and deletes a row this big: a full disk fails it.
PROBE_BYTES = 64 * 1024


class PostgresDriver:
    """A connection to PostgreSQL used only on the engine's worker thread; reopened after
    it breaks."""

    def __init__(self, url: str, password: str | None) -> None:
        self._url = url
        self._password = password
        self._conn: psycopg.Connection[DictRow] | None = None

    @classmethod
    def open(
        cls, url: str, password: str | None, migrations: Sequence[Migration] = MIGRATIONS
    ) -> tuple[PostgresDriver, Upgrade]:
        """Connect and upgrade the schema; synchronous, once at start."""
        driver = cls(url, password)
        try:
            upgrade = _migrate(driver.connection(), driver.location, migrations)
        except psycopg.Error as exc:
            driver.close()
            raise StoreError(
                f"cannot open the store at {driver.location}: {_one_line(exc)}"
            ) from None
        except StoreError:
            driver.close()
            raise
        return driver, upgrade

    @property
    def location(self) -> str:
        return strip_credentials(self._url)

    def connection(self) -> psycopg.Connection[DictRow]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        extra: dict[str, Any] = {} if self._password is None else {"password": self._password}
        try:
            self._conn = psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="talkbot",
                options=SESSION_OPTIONS,
                **extra,
            )
        except psycopg.Error:
            raise
        except Exception as exc:  # a URL libpq cannot parse
            raise StoreError(f"cannot use the store URL {self.location}: {exc}") from None
        return self._conn

    def transaction(self, work: Work[T]) -> T:
        conn = self.connection()
        with conn.transaction():
            return work(_PostgresTx(conn))

    def read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        return self.connection().execute(_sql(sql), _params(params)).fetchall()

    def probe(self) -> None:
        self.transaction(_probe)

    def is_error(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.Error)

    def unavailable(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)

    def transient(self, exc: BaseException) -> bool:
        # 40001 serialization failure, 40P01 deadlock: another replica's transaction won.
        return isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("40")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()


class _PostgresTx:
    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        return "postgres"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self._conn.execute(_sql(sql), _params(params))
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(_one_line(exc)) from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_sql(sql), [_params(row) for row in rows])

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        with self._conn.transaction():
            yield


def describe(url: str, password: str | None, latest: int = len(MIGRATIONS)) -> str:
    """For ``talkbot check``: can we connect, and at which schema version is the store?
    Changes nothing (no migration); any failure is a finding, returned as text."""
    where = strip_credentials(url)
    extra: dict[str, Any] = {} if password is None else {"password": password}
    try:
        with psycopg.connect(
            url, connect_timeout=CONNECT_TIMEOUT_S, row_factory=dict_row, **extra
        ) as conn:
            version = _version(conn, where)
    except (psycopg.Error, StoreError) as exc:
        return f"PostgreSQL at {where}: cannot use it: {_one_line(exc)}"
    if version == 0:
        return f"PostgreSQL at {where}: reachable, empty (serve creates the schema)"
    if version > latest:
        return (
            f"PostgreSQL at {where}: schema version {version}, newer than this talkbot"
            f" ({latest}): upgrade it"
        )
    state = "current" if version == latest else f"serve upgrades it to {latest}"
    return f"PostgreSQL at {where}: schema version {version} ({state})"


@functools.lru_cache(maxsize=256)
def _sql(sql: str) -> bytes:
    """The aggregates' ``?`` placeholders in psycopg's ``%s`` style (no ``?`` or ``%``
    appears in their SQL otherwise)."""
    return sql.replace("%", "%%").replace("?", "%s").encode()


def _params(params: Sequence[Any]) -> tuple[Any, ...]:
    """PostgreSQL text cannot hold NUL; SQLite's can. A NUL becomes U+FFFD here."""
    return tuple(
        value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value
        for value in params
    )


def _probe(tx: Tx) -> None:
    [row] = tx.execute(
        "INSERT INTO audit (at, actor, room, action, detail)"
        " VALUES (0, '', '', 'store.probe', repeat('x', ?)) RETURNING id",
        (PROBE_BYTES,),
    ).fetchall()
    tx.execute("DELETE FROM audit WHERE id = ?", (row["id"],))


def _migrate(
    conn: psycopg.Connection[DictRow], location: str, migrations: Sequence[Migration]
) -> Upgrade:
    """Bring the database to the latest version in one transaction (DDL is transactional
    in PostgreSQL): all steps and the new version, or nothing."""
    latest = len(migrations)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        version = _version(conn, location)
        if version > latest:
            raise StoreVersionError(
                f"the store at {location} has schema version {version}, newer than this"
                f" talkbot understands ({latest}): upgrade talkbot on every replica"
            )
        if version == latest:
            return Upgrade(latest, latest, None)
        doing = "creating the schema"
        try:
            start = version
            if version == 0:
                for statement in POSTGRES_SCHEMA_AT_BASELINE:
                    conn.execute(statement.encode())
                conn.execute("CREATE TABLE talkbot_schema (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO talkbot_schema (version) VALUES (0)")
                start = POSTGRES_BASELINE
            for step in range(start + 1, latest + 1):
                doing = f"step {step} ({migrations[step - 1].summary})"
                for statement in migrations[step - 1].postgres:
                    conn.execute(statement.encode())
            conn.execute("UPDATE talkbot_schema SET version = %s", (latest,))
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot upgrade the store at {location} from schema version {version} to"
                f" {latest}: {doing} failed: {_one_line(exc)}; the store is unchanged"
            ) from None
    return Upgrade(version, latest, None)


def _version(conn: psycopg.Connection[DictRow], location: str) -> int:
    found = conn.execute("SELECT to_regclass('talkbot_schema') IS NOT NULL AS ok").fetchone()
    if found is not None and found["ok"]:
        row = conn.execute("SELECT version FROM talkbot_schema").fetchone()
        return 0 if row is None else int(row["version"])
    tables = conn.execute("SELECT to_regclass('inbox') IS NOT NULL AS ok").fetchone()
    if tables is not None and tables["ok"]:
        raise StoreVersionError(
            f"the database at {location} has an inbox table but no talkbot_schema: it is"
            " not a talkbot store; give talkbot its own database"
        )
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
