"""PostgreSQL driver: acknowledged inserts/s, latency and CPU per ack, asyncpg vs psycopg 3.

    .venv/bin/python -m bench.pg_driver [--seconds 1.5] [--callers 1 4 32] [--repeat 1]

The store's hot path: a webhook is acknowledged only once its inbox row (room, dedupe key,
random, kind, a ~1 KB body, received_at; two unique keys) is committed. N asyncio callers
each insert a row and wait for its commit, again and again, against a real PostgreSQL
(tests/pgserver.py, started here with durable settings: fsync and synchronous_commit on,
so a commit waits for the disk). The ways to do it:

  (a) asyncpg, a pool of N connections, one autocommitted INSERT per ack (the baseline;
      without the pool's reset query at every release, see _keep_session; --ways a0 a
      measures that too);
  (b) psycopg 3 async, an AsyncConnectionPool of N connections, the same shape;
  (c) psycopg 3 sync on ONE worker thread with group commit, as the store does with SQLite:
      callers queue their rows, a flusher task hands what queued up to the thread, which
      runs it in one transaction and resolves every caller's future after the COMMIT;
      (c1) one execute per row, each a round trip (a store of arbitrary writes, as today),
      (c2) the same executes inside psycopg's pipeline mode (no wait between them),
      (c3) one executemany for the batch (pipelined by psycopg too);
  (d) asyncpg on one connection with the same group commit (executemany): a control;
  (e) psycopg 3 async on one connection with the same group commit (executemany): a
      control; with (c3) and (d) it tells the thread's cost from the driver's.

Figures are from the same run and compared with (a) (with --ways, the first one given);
with --repeat N the cases run N times interleaved and the table gives medians. CPU per ack
is the bench process's own (all threads, the callers included: the same for every way)
and the server's (every process of the cluster, from /proc). Also: what `import asyncpg`
and `import psycopg` cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import secrets
import statistics
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import asyncpg  # type: ignore[import-untyped]
import psycopg
from psycopg_pool import AsyncConnectionPool

from bench import rig
from tests.pgserver import PostgresServer

Row = tuple[str, str, str, str, str, float]
T = TypeVar("T")

INSERT_ASYNCPG = (
    "INSERT INTO inbox (room, dedupe_key, random, kind, body, received_at)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
)
INSERT_PSYCOPG = INSERT_ASYNCPG.replace("$1, $2, $3, $4, $5, $6", "%s, %s, %s, %s, %s, %s")
SCHEMA = """
CREATE TABLE inbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room text NOT NULL,
    dedupe_key text NOT NULL UNIQUE,
    random text NOT NULL UNIQUE,
    kind text NOT NULL,
    body text NOT NULL,
    received_at double precision NOT NULL
)
"""
# A Talk webhook's JSON, padded to about 1 KB.
BODY = rig.chat_event("x" * 700, "room0001").decode()


def rows() -> Iterator[Row]:
    for n in itertools.count():
        yield (
            f"room{n % 100:04d}",
            f"talk:{n}",
            secrets.token_hex(32),
            "chat",
            BODY,
            time.time(),
        )


# -- the ways to acknowledge -----------------------------------------------------------------


class Acker(ABC):
    """Commits one row per ``ack``; returns only once it is committed."""

    label = ""
    commits = 0  # transactions, for the group commits (the others: one per ack)

    @abstractmethod
    async def open(self, url: str, callers: int) -> None: ...

    @abstractmethod
    async def ack(self, row: Row) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


async def _keep_session(_conn: Any) -> None:
    """asyncpg's pool sends "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL" at every release unless given a reset of its own; psycopg_pool sends
    nothing. A store that sets no session state needs none: a fair comparison skips it."""


class AsyncpgPool(Acker):
    def __init__(self, *, default_reset: bool = False) -> None:
        self.default_reset = default_reset
        self.label = "(a0) asyncpg pool, its reset" if default_reset else "(a) asyncpg pool"

    async def open(self, url: str, callers: int) -> None:
        reset = None if self.default_reset else _keep_session
        self.pool: Any = await asyncpg.create_pool(
            url, min_size=callers, max_size=callers, reset=reset
        )

    async def ack(self, row: Row) -> None:
        await self.pool.execute(INSERT_ASYNCPG, *row)

    async def close(self) -> None:
        await self.pool.close()


class PsycopgAsyncPool(Acker):
    label = "(b) psycopg async pool"

    async def open(self, url: str, callers: int) -> None:
        self.pool = AsyncConnectionPool(
            url, min_size=callers, max_size=callers, open=False, kwargs={"autocommit": True}
        )
        await self.pool.open(wait=True)

    async def ack(self, row: Row) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(INSERT_PSYCOPG, row)

    async def close(self) -> None:
        await self.pool.close()


class GroupCommit(Acker):
    """The store's shape: rows queued in one loop tick share one transaction."""

    def __init__(self) -> None:
        self.batch: list[tuple[Row, asyncio.Future[None]]] = []
        self.flusher: asyncio.Task[None] | None = None

    @abstractmethod
    async def commit(self, rows: list[Row]) -> None: ...

    async def ack(self, row: Row) -> None:
        done = asyncio.get_running_loop().create_future()
        self.batch.append((row, done))
        if self.flusher is None:
            self.flusher = asyncio.create_task(self.flush())
        await done

    async def flush(self) -> None:
        try:
            while self.batch:
                batch, self.batch = self.batch, []
                try:
                    await self.commit([row for row, _ in batch])
                except Exception as exc:  # every caller of the batch gets it
                    for _, done in batch:
                        done.set_exception(exc)
                    continue
                self.commits += 1
                for _, done in batch:
                    done.set_result(None)
        finally:
            self.flusher = None


class PsycopgThread(GroupCommit):
    """psycopg 3 sync, one connection owned by one worker thread."""

    LABELS: ClassVar[dict[str, str]] = {
        "per row": "(c1) psycopg thread, per row",
        "pipeline": "(c2) psycopg thread, pipelined",
        "executemany": "(c3) psycopg thread, executemany",
    }

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.label = self.LABELS[mode]

    async def open(self, url: str, callers: int) -> None:  # noqa: ARG002 - one connection
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-store")
        self.conn = await self.on_worker(lambda: psycopg.connect(url, autocommit=True))

    async def on_worker(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.worker, work)

    def commit_on_worker(self, rows: list[Row]) -> None:
        conn = self.conn
        if self.mode == "executemany":
            with conn.transaction():  # BEGIN ... COMMIT
                conn.cursor().executemany(INSERT_PSYCOPG, rows)
        elif self.mode == "pipeline":
            with conn.pipeline(), conn.transaction():
                for row in rows:
                    conn.execute(INSERT_PSYCOPG, row)
        else:
            with conn.transaction():
                for row in rows:
                    conn.execute(INSERT_PSYCOPG, row)

    async def commit(self, rows: list[Row]) -> None:
        await self.on_worker(lambda: self.commit_on_worker(rows))

    async def close(self) -> None:
        await self.on_worker(self.conn.close)
        self.worker.shutdown()


class AsyncpgGroup(GroupCommit):
    label = "(d) asyncpg, group commit"

    async def open(self, url: str, callers: int) -> None:  # noqa: ARG002 - one connection
        self.conn: Any = await asyncpg.connect(url)

    async def commit(self, rows: list[Row]) -> None:
        async with self.conn.transaction():
            await self.conn.executemany(INSERT_ASYNCPG, rows)

    async def close(self) -> None:
        await self.conn.close()


class PsycopgAsyncGroup(GroupCommit):
    label = "(e) psycopg async, group commit"

    async def open(self, url: str, callers: int) -> None:  # noqa: ARG002 - one connection
        self.conn = await psycopg.AsyncConnection.connect(url, autocommit=True)

    async def commit(self, rows: list[Row]) -> None:
        async with self.conn.transaction():
            await self.conn.cursor().executemany(INSERT_PSYCOPG, rows)

    async def close(self) -> None:
        await self.conn.close()


ACKERS: dict[str, Callable[[], Acker]] = {
    "a": AsyncpgPool,
    "a0": lambda: AsyncpgPool(default_reset=True),  # not run unless asked for
    "b": PsycopgAsyncPool,
    "c1": lambda: PsycopgThread("per row"),
    "c2": lambda: PsycopgThread("pipeline"),
    "c3": lambda: PsycopgThread("executemany"),
    "d": AsyncpgGroup,
    "e": PsycopgAsyncGroup,
}


# -- measuring ---------------------------------------------------------------------------------


def server_cpu_seconds(server: PostgresServer) -> float:
    """User plus system CPU so far of every process of the cluster."""
    total = 0.0
    for pid in server.pids():
        with contextlib.suppress(OSError):  # a process that exited meanwhile
            total += rig.cpu_seconds(pid)
    return total


@dataclass
class Case:
    """One run of one way at one number of callers."""

    label: str
    callers: int
    load: rig.Load
    client_us: float  # CPU per ack, this process (all threads)
    server_us: float  # CPU per ack, every process of the cluster
    acks_per_commit: float
    fsyncs_per_ack: float


async def drive(acker: Acker, source: Iterator[Row], callers: int, seconds: float) -> rig.Load:
    """``callers`` callers, each acking its next row as soon as the previous one is."""
    load = rig.Load()
    started = time.perf_counter()
    stop = started + seconds

    async def caller() -> None:
        while (now := time.perf_counter()) < stop:
            await acker.ack(next(source))
            load.record(200, time.perf_counter() - now)

    await asyncio.gather(*(caller() for _ in range(callers)))
    load.seconds = time.perf_counter() - started
    return load


async def admin(server: PostgresServer, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements as the superuser; the rows of the last one."""
    async with await psycopg.AsyncConnection.connect(server.url("bench"), autocommit=True) as conn:
        cursor = None
        for statement in statements:
            cursor = await conn.execute(statement)
        return [] if cursor is None or cursor.description is None else await cursor.fetchall()


async def wal_syncs(server: PostgresServer) -> int:
    [(count,)] = await admin(server, "SELECT wal_sync FROM pg_stat_wal")
    return int(count)


async def run_case(
    server: PostgresServer, make: Callable[[], Acker], callers: int, args: argparse.Namespace
) -> Case:
    # The same start for every case: an empty table, nothing dirty left to checkpoint.
    await admin(server, "DROP TABLE IF EXISTS inbox", SCHEMA, "CHECKPOINT")
    syncs_before = await wal_syncs(server)
    acker = make()
    await acker.open(server.url("bench"), callers)
    source = rows()
    warm = await drive(acker, source, callers, args.warmup)
    commits_before = acker.commits
    cpu_before = time.process_time(), server_cpu_seconds(server)
    load = await drive(acker, source, callers, args.seconds)
    cpu_after = time.process_time(), server_cpu_seconds(server)
    commits = max(1, acker.commits - commits_before)
    await acker.close()
    await asyncio.sleep(0.2)  # the backends' exit flushes their WAL statistics
    syncs = await wal_syncs(server) - syncs_before
    [(stored,)] = await admin(server, "SELECT count(*) FROM inbox")
    if stored != warm.count + load.count:
        raise RuntimeError(f"{acker.label}: {warm.count + load.count} acks, {stored} rows")
    return Case(
        label=acker.label,
        callers=callers,
        load=load,
        client_us=1e6 * (cpu_after[0] - cpu_before[0]) / load.count,
        server_us=1e6 * (cpu_after[1] - cpu_before[1]) / load.count,
        acks_per_commit=load.count / commits if isinstance(acker, GroupCommit) else 1.0,
        fsyncs_per_ack=syncs / stored,
    )


# -- import cost -------------------------------------------------------------------------------

IMPORT_PROBE = """
import asyncio, json, ssl, sys, time
import aiohttp  # the daemon has these loaded already: count what the driver adds

def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

before, started = rss_mib(), time.perf_counter()
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps([time.perf_counter() - started, rss_mib() - before]))
"""


def import_cost(modules: list[str], repeat: int = 5) -> tuple[float, float]:
    """Median import time (ms) and RSS growth (MiB) in a fresh interpreter."""
    samples = []
    for _ in range(repeat):
        out = subprocess.run(  # noqa: S603 - our own interpreter and probe
            [sys.executable, "-c", IMPORT_PROBE, *modules],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        samples.append(json.loads(out.stdout))
    return (
        1000 * statistics.median(s[0] for s in samples),
        statistics.median(s[1] for s in samples),
    )


# -- report ------------------------------------------------------------------------------------


@dataclass
class Medians:
    """The medians of one way's runs at one number of callers."""

    label: str
    callers: int
    runs: list[Case]

    def median(self, value: Callable[[Case], float]) -> float:
        return statistics.median(value(case) for case in self.runs)

    @property
    def rate(self) -> float:
        return self.median(lambda case: case.load.rate)

    @property
    def client_us(self) -> float:
        return self.median(lambda case: case.client_us)


def report(cases: list[Case]) -> None:
    print(
        "| callers | way | acks/s | p50 ms | p99 ms | client CPU µs/ack | server CPU µs/ack "
        "| acks/commit | WAL fsyncs/ack | acks/s vs base | client CPU vs base |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for callers in sorted({case.callers for case in cases}):
        labels = list(dict.fromkeys(case.label for case in cases if case.callers == callers))
        rows = [
            Medians(label, callers, [c for c in cases if (c.callers, c.label) == (callers, label)])
            for label in labels
        ]
        base = rows[0]
        for row in rows:
            print(
                f"| {callers} | {row.label} | {row.rate:,.0f} "
                f"| {row.median(lambda c: c.load.percentile_ms(50)):.2f} "
                f"| {row.median(lambda c: c.load.percentile_ms(99)):.2f} "
                f"| {row.client_us:.0f} | {row.median(lambda c: c.server_us):.0f} "
                f"| {row.median(lambda c: c.acks_per_commit):.1f} "
                f"| {row.median(lambda c: c.fsyncs_per_ack):.2f} "
                f"| {row.rate / base.rate:.2f} | {row.client_us / base.client_us:.2f} |"
            )


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {rig.machine()}")
    with PostgresServer(durable=True, parent=args.dir) as server:
        server.create_database("bench")
        [(version,)] = await admin(server, "SHOW server_version")
        [(fsync,)] = await admin(server, "SHOW fsync")
        [(sync_commit,)] = await admin(server, "SHOW synchronous_commit")
        print(
            f"server: PostgreSQL {version}, fsync={fsync}, synchronous_commit={sync_commit}, "
            f"data in {server.data_dir}"
        )
        print(
            f"load: N callers, each inserts one ~{len(BODY)} B inbox row and waits for its "
            f"commit; {args.warmup:g} s warm-up + {args.seconds:g} s per case"
        )
        cases = []
        for _ in range(args.repeat):
            for callers in args.callers:
                for way in args.ways:
                    case = await run_case(server, ACKERS[way], callers, args)
                    load = case.load
                    print(
                        f"  {callers:3} callers {case.label:34} {load.count:6} acks "
                        f"{load.rate:7,.0f}/s p50 {load.percentile_ms(50):5.2f} ms "
                        f"p99 {load.percentile_ms(99):5.2f} ms",
                        flush=True,
                    )
                    cases.append(case)
    print()
    report(cases)
    print()
    print("import cost after asyncio, ssl and aiohttp (median of 5 fresh interpreters):")
    for modules in (["asyncpg"], ["psycopg"], ["psycopg", "psycopg_pool"]):
        ms, mib = import_cost(modules)
        print(f"  import {' + '.join(modules):24} {ms:5.0f} ms  RSS +{mib:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measured time per case")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured time per case")
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 4, 32])
    parser.add_argument(
        "--ways",
        nargs="+",
        choices=list(ACKERS),
        default=[way for way in ACKERS if way != "a0"],
        help="the first is the base; a0: (a) with asyncpg's reset query at every release",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of every case, interleaved")
    parser.add_argument(
        "--dir", type=Path, default=None, help="parent of the cluster's directory (a disk!)"
    )
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
