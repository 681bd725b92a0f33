"""Upgrading a SQLite store: the numbered steps it lacks, run at start in one transaction.

``PRAGMA user_version`` is the schema version: the number of steps a store has had.
Step N (bot/store/steps.py) takes a store from version N-1 to N; a fresh store runs them
all, so a new store and an upgraded one end with the same schema. Before it upgrades a
store that had data, it backs it up; a store newer than the code is refused.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.clock import Clock
from bot.errors import StoreError, StoreVersionError
from bot.store.steps import MIGRATIONS, Migration


@dataclass(frozen=True)
class Upgrade:
    """What ``migrate`` did: the schema version before and after, and the backup made."""

    from_version: int
    to_version: int
    backup: Path | None


# Stores written before the schema had a version (user_version 0) have the shape of one
# of these versions; which one is told by their tables and columns.
LAST_UNVERSIONED = 4


# -- running them --------------------------------------------------------------------------


def migrate(
    db: sqlite3.Connection,
    path: Path,
    clock: Clock,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> Upgrade:
    """Bring the store on ``db`` to the latest version; back it up first if it had data.

    All pending steps and the new version commit together, or nothing changes. A store
    newer than ``migrations`` is refused, as is an unversioned one of unknown shape.
    """
    latest = len(migrations)
    stored = user_version(db)
    version = stored or unversioned_version(db, path)
    if version > latest:
        raise StoreVersionError(
            f"the store at {path} has schema version {version}, newer than this talkbot"
            f" understands ({latest}): upgrade talkbot, or restore a backup made before"
            " the upgrade"
        )
    if stored == latest:
        return Upgrade(latest, latest, None)
    backup = back_up(db, path, version, clock) if 0 < version < latest else None
    _apply(db, path, migrations, version)
    return Upgrade(version, latest, backup)


def user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def unversioned_version(db: sqlite3.Connection, path: Path) -> int:
    """The version whose shape a store without one has; 0 for an empty file."""
    shape = _shape(db)
    if not shape:
        return 0
    for version in range(1, LAST_UNVERSIONED + 1):
        if shape == _shape_of_version(version):
            return version
    raise StoreVersionError(
        f"the store at {path} has no schema version and its tables ({', '.join(sorted(shape))})"
        " match no talkbot release: restore a backup, or move it away to start a new store"
    )


def back_up(db: sqlite3.Connection, path: Path, version: int, clock: Clock) -> Path:
    """A consistent copy of the store beside it, named after its version and the time."""
    stamp = datetime.fromtimestamp(clock.now(), tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.bak-v{version}-{stamp}")
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, path.stat().st_mode & 0o777))
        copy = sqlite3.connect(target, isolation_level=None)
        try:
            db.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            copy.close()
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot back up the store at {path} to {target} before upgrading it: {exc}"
        ) from None
    return target


def _apply(
    db: sqlite3.Connection, path: Path, migrations: Sequence[Migration], version: int
) -> None:
    """Steps ``version + 1`` to the last, and the new version, in one transaction."""
    latest = len(migrations)
    doing = "setting the version"
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version + 1, latest + 1):
            doing = f"step {step} ({migrations[step - 1].summary})"
            migrations[step - 1].apply(db)
        doing = "setting the version"
        db.execute(f"PRAGMA user_version = {latest:d}")
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if not isinstance(exc, sqlite3.Error):
            raise
        raise StoreError(
            f"cannot upgrade the store at {path} from schema version {version} to {latest}:"
            f" {doing} failed: {exc}; the store is unchanged"
        ) from None
    db.execute("COMMIT")


def _shape(db: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """Each table's column names (SQLite's own tables left out)."""
    tables = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, 7) != 'sqlite_'"
    ).fetchall()
    return {
        str(table[0]): tuple(
            str(column[0])
            for column in db.execute("SELECT name FROM pragma_table_info(?)", (table[0],))
        )
        for table in tables
    }


def _shape_of_version(version: int) -> dict[str, tuple[str, ...]]:
    scratch = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for migration in MIGRATIONS[:version]:
            migration.apply(scratch)
        return _shape(scratch)
    finally:
        scratch.close()
