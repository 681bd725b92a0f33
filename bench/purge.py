"""Housekeeping on a store of months: how long each purge holds the store's thread.

    .venv/bin/python -m bench.purge [--per-day 20000] [--tree /tmp/before]

The store is built with talkbot's own schema as months of housekeeping leave it: 180 days
of finished messages, the bodies of those older than 14 days already emptied, and six
hours of bodies and of rows due now (the purge runs every six hours). Then one
``Store.purge()`` runs and every commit it makes is timed: while one runs, no webhook can
commit (H04, H09).
``--tree`` runs the same measurement with the ``bot`` package of another checkout (a
git worktree of an older commit), in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# With --tree, the measuring run imports these from that checkout (PYTHONPATH).
from bot.clock import ManualClock, SystemClock
from bot.store import Store
from bot.store.sqlite import SqliteDriver

DAY = 24 * 3600
DAYS = 180
BODY_DAYS = 14
DUE_S = 6 * 3600  # the purge's interval: what comes due between two runs
BODY = '{"type":"Create","object":{"content":"' + "x" * 600 + '"}}'


def build(path: Path, per_day: int, now: float) -> int:
    """The store as housekeeping leaves it, at ``now``; the number of rows."""
    SqliteDriver.open(path, SystemClock())[0].close()  # talkbot's schema, all its steps
    rows = per_day * DAYS
    step = DAYS * DAY / rows
    emptied_before = now - BODY_DAYS * DAY - DUE_S  # emptied by the last run
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO inbox (room, dedupe_key, kind, body, received_at, status,"
            " finished_at, error) VALUES (?, ?, 'Create', ?, ?, 'done', ?, '')",
            (
                (f"room{n % 100:03d}", f"Create:room{n % 100:03d}:{n}", body, at, at)
                for n in range(rows)
                for at in (now - DAYS * DAY - DUE_S + n * step,)
                for body in ("" if at < emptied_before else BODY,)
            ),
        )
        db.execute("COMMIT")
    db.close()
    return rows


async def measure(path: Path, now: float) -> dict[str, Any]:
    """One purge at ``now``: its commits, the longest, and what it changed."""
    clock = ManualClock()
    clock.advance(now - clock.now())
    store = Store.open(path, clock)
    driver = store._engine.driver
    real = driver.transaction
    commits: list[float] = []

    def timed(work: Any) -> Any:
        started = time.perf_counter()
        try:
            return real(work)
        finally:
            commits.append(time.perf_counter() - started)

    driver.transaction = timed  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        await store.purge()
        total = time.perf_counter() - started
        [bodies] = await store._engine.read("SELECT count(*) AS n FROM inbox WHERE body != ''")
        [left] = await store._engine.read("SELECT count(*) AS n FROM inbox")
    finally:
        await store.close()
    return {
        "total_s": total,
        "commits": len(commits),
        "longest_ms": 1000 * max(commits),
        "bodies_left": bodies["n"],
        "rows_left": left["n"],
    }


def inner(per_day: int) -> None:
    """Build and measure with the ``bot`` package on sys.path; one JSON line out."""
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "talkbot.sqlite3"
        rows = build(path, per_day, now)
        result = asyncio.run(measure(path, now))
        result["rows"] = rows
        result["mib"] = path.stat().st_size / 2**20
    print(json.dumps(result))


def run(tree: Path, per_day: int) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, __file__, "--inner", "--per-day", str(per_day)],
        cwd=tree,
        env={"PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-day", type=int, default=20_000, help="messages a day")
    parser.add_argument("--tree", type=Path, help="also measure this checkout's bot package")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.per_day)
        return
    trees = {"talkbot": Path(__file__).resolve().parent.parent}
    if args.tree is not None:
        trees["before"] = args.tree.resolve()
    print(
        f"store: {DAYS} days x {args.per_day:,} messages, bodies of the last {BODY_DAYS} days"
        f" kept, {DUE_S // 3600} h of bodies and of rows due"
    )
    for name, tree in trees.items():
        r = run(tree, args.per_day)
        print(
            f"{name:8s} {r['rows']:,} rows ({r['mib']:.0f} MiB): purge {r['total_s']:.2f} s in"
            f" {r['commits']} commits, longest {r['longest_ms']:.1f} ms;"
            f" {r['rows_left']:,} rows and {r['bodies_left']:,} bodies left"
        )


if __name__ == "__main__":
    main()
