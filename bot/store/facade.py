"""The ``Store``: one object over every aggregate, opened on the backend the config names."""

from __future__ import annotations

from pathlib import Path

import structlog

from bot.clock import Clock
from bot.errors import StoreError
from bot.store.audit import Audit
from bot.store.engine import Engine, HealthWatcher
from bot.store.history import History
from bot.store.inbox import Inbox
from bot.store.jobs import Jobs
from bot.store.migrations import Upgrade
from bot.store.pending import Pending
from bot.store.records import StoreHealth
from bot.store.replicas import Replicas
from bot.store.roles import Roles
from bot.store.rooms import Rooms
from bot.store.sqlite import SqliteDriver, Synchronous
from bot.store.usage import Usage

log = structlog.get_logger(__name__)


class Store(Inbox, Rooms, History, Roles, Audit, Pending, Jobs, Replicas, Usage):
    """The durable state of talkbot, on whichever backend the config names.

    ``replica`` names this process among those sharing the store: what it approves or
    starts is marked as its own, and only its death makes that "interrupted".
    """

    def __init__(self, engine: Engine, clock: Clock, replica: str = "") -> None:
        self._engine = engine
        self._clock = clock  # the aggregates' timestamps
        self._replica = replica

    @classmethod
    def open(
        cls, path: Path, clock: Clock, *, replica: str = "", synchronous: Synchronous = "full"
    ) -> Store:
        """Open (or create) the SQLite store at ``path``, upgrading its schema; it takes an
        exclusive lock (one process per file). Synchronous: it runs once at start."""
        driver, upgrade = SqliteDriver.open(path, clock, synchronous=synchronous)
        _log_upgrade(upgrade)
        return cls(Engine(driver, clock), clock, replica)

    @classmethod
    def open_postgres(
        cls, url: str, password: str | None, clock: Clock, *, replica: str = ""
    ) -> Store:
        """Connect to the PostgreSQL store at ``url`` and upgrade its schema; replicas of
        talkbot share it. Synchronous: it runs once at start."""
        try:
            from bot.store.postgres import PostgresDriver  # noqa: PLC0415 - optional dependency
        except ImportError:
            raise StoreError(
                "the PostgreSQL store needs psycopg: pip install 'talkbot[postgres]'"
            ) from None
        driver, upgrade = PostgresDriver.open(url, password)
        _log_upgrade(upgrade)
        return cls(Engine(driver, clock), clock, replica)

    async def close(self) -> None:
        """Stop retrying, refuse what still waits, close the connection; twice is fine."""
        await self._engine.close()

    @property
    def health(self) -> StoreHealth:
        return self._engine.health

    def watch_health(self, watcher: HealthWatcher) -> None:
        """Call ``watcher`` on the loop each time the store stops or starts committing."""
        self._engine.watch_health(watcher)

    async def limit_growth_for_tests(self, pages: int | None) -> None:
        """Test hook (SQLite): the file may grow by ``pages`` pages more, then every write
        that needs a page fails as on a full disk; None lifts the limit."""
        driver = self._engine.driver
        if not isinstance(driver, SqliteDriver):
            raise TypeError("only the SQLite store can simulate a full disk")
        await self._engine.on_worker(lambda: driver.limit_growth(pages))

    async def checkpoints_for_tests(self) -> tuple[int, int, int]:
        """Test hook (SQLite): checkpointer passes, WAL restarts, autocheckpoint setting."""
        driver = self._engine.driver
        if not isinstance(driver, SqliteDriver):
            raise TypeError("only the SQLite store has a checkpointer")
        return await self._engine.on_worker(driver.checkpoints)


def _log_upgrade(upgrade: Upgrade) -> None:
    if 0 < upgrade.from_version < upgrade.to_version:  # not for a new store
        log.info(
            "store.migrated",
            from_version=upgrade.from_version,
            to_version=upgrade.to_version,
            backup=None if upgrade.backup is None else str(upgrade.backup),
        )
