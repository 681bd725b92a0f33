"""The SQLite store's checkpoints (H07, #19): never inside a commit, and a WAL that stays
bounded however long the writes go on (bot/store/sqlite.py, Checkpointer)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.store import Store
from bot.store.sqlite import BACKSTOP_PAGES, WAL_SOFT_LIMIT_BYTES

# ~4 KB per event, ~two pages: BATCHES x PER_BATCH of them is ~48 MB of WAL, which a store
# that never starts its WAL over would keep in one file.
BODY = b'{"text":"' + b"x" * 4000 + b'"}'
PER_BATCH = 40
BATCHES = 300


async def write_sustained(store: Store, wal: Path) -> int:
    """Webhooks as fast as the store takes them; the largest the WAL file got."""
    largest = 0
    for batch in range(BATCHES):
        await asyncio.gather(
            *(
                store.accept_event(
                    room=f"room{n % 7}",
                    kind="Create",
                    body=BODY,
                    random=f"{batch:08d}{n:08d}".ljust(64, "r"),
                    dedupe_key=f"Create:room{n % 7}:{batch * PER_BATCH + n}",
                )
                for n in range(PER_BATCH)
            )
        )
        largest = max(largest, os.stat(wal).st_size)
    return largest


@pytest.mark.timing
async def test_h07_the_wal_stays_bounded_under_sustained_writes(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "talkbot.sqlite3"
    store = Store.open(path, clock)
    try:
        largest = await write_sustained(store, Path(f"{path}-wal"))
        passes, restarts, autocheckpoint = await store.checkpoints_for_tests()
    finally:
        await store.close()
    written = BATCHES * PER_BATCH * len(BODY)
    # The bound is the checkpointer's, not SQLite's: the write connection's own
    # autocheckpoint (a backstop) would let the WAL reach 16 MiB before a commit copies it.
    assert autocheckpoint == BACKSTOP_PAGES
    assert passes > 0
    assert restarts > 0
    # A soft limit's worth, plus what comes in while a pass copies: far below what was
    # written (a WAL nobody starts over holds all of it) and below the backstop.
    bound = 3 * WAL_SOFT_LIMIT_BYTES
    assert bound < BACKSTOP_PAGES * 4096
    assert written > 2.5 * bound
    assert largest <= bound, f"the WAL reached {largest / 2**20:.1f} MiB"


async def test_h07_every_write_is_there_after_checkpoints_and_a_reopen(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "talkbot.sqlite3"
    store = Store.open(path, clock)
    await write_sustained(store, Path(f"{path}-wal"))
    await store.close()
    assert not os.path.exists(f"{path}-wal")  # noqa: ASYNC240 - the last close removed it
    store = Store.open(path, clock)
    try:
        assert await store.inbox_backlog() == BATCHES * PER_BATCH
    finally:
        await store.close()
