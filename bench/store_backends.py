"""Store backends and replicas (#15): SQLite vs PostgreSQL, two replicas vs one.

Ingest and turns on SQLite against PostgreSQL, and two `talkbot serve` replicas on one
PostgreSQL database against one, in the same run.

    .venv/bin/python -m bench.store_backends [--seconds 4] [--connections 1 8 32] [--repeat 2]

Three setups, each a fresh store and fresh `talkbot serve` processes per round, rounds
interleaved (the order rotates) so a noisy neighbour hurts all alike:

- ``sqlite``: one process, the embedded store (WAL, ``synchronous=NORMAL``);
- ``postgres``: one process on a PostgreSQL 15 that this bench starts (tests/pgserver.py)
  with durable settings (fsync, synchronous_commit and full-page writes on);
- ``postgres x2``: two processes on one database of that server; the client spreads the
  webhooks over both (ingest: half the connections each; turns: the rooms alternately).

Ingest is bench.ingest's traffic (signed Create webhooks over 100 group rooms, every 20th
names the bot, the model stalls) in a closed loop at each number of connections, plus a
paced run at a modest rate for the p99 a real Talk server would see. Turns is
bench.turns's (N rooms ask at once, one tool round against a model with a fixed latency),
then a second question per room, which on two replicas goes to the replica that does not
serve the room (a load balancer does that half the time).

Checked, and reported as PROBLEM lines: every acknowledged webhook is in the inbox, no
event was started twice, no message written to the history twice, no message answered
twice, every room answered once per question, every status 200. Also printed: what the
processes logged at warning level and above, and (PostgreSQL) the longest time a replica
went without a heartbeat, from polling the replicas table.

CPU per webhook / per turn is read from /proc: the talkbot processes' (their event loop
thread apart), every process of the cluster's, this process's (load and fakes) and the
whole machine's (/proc/stat: the neighbours show). WAL fsyncs and transactions per
webhook come from pg_stat_wal and pg_stat_database (read after a pause: backends report
them about once a second); ``--statements`` adds pg_stat_statements' calls per webhook.
``--lease-s`` and ``--ingest-model-latency`` (the ingest model answers instead of
stalling) reproduce the replica findings in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import ingest, rig, turns
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.pgserver import PostgresServer

SQLITE, POSTGRES, REPLICAS = "sqlite", "postgres", "postgres x2"
SETUPS = (SQLITE, POSTGRES, REPLICAS)
# Backends report their statistics about once a second while busy (PGSTAT_MIN_INTERVAL).
STATS_SETTLE_S = 1.6
_databases = itertools.count(1)


# -- the processes ---------------------------------------------------------------------------


@dataclass
class Running:
    """One setup's `talkbot serve` processes, and the database they share (PostgreSQL)."""

    setup: str
    procs: list[rig.Process]
    homes: list[Path]
    pg: PostgresServer | None
    database: str | None
    acked: int = 0  # webhooks that got 200, warm-ups included: all must be in the inbox

    @property
    def urls(self) -> list[str]:
        return [proc.webhook_url for proc in self.procs]

    def sample(self) -> Sample:
        """CPU seconds so far: each talkbot process, each process of the cluster, this
        process (the load and the fakes), the whole machine; and the time."""
        pids = [proc.pid for proc in self.procs]
        if self.pg is not None:
            pids += self.pg.pids()
        found = {}
        for pid in pids:
            with contextlib.suppress(OSError):  # a backend that exited meanwhile
                found[pid] = rig.cpu_seconds(pid)
        # Python 3.11 does not name OS threads: the main thread runs the event loop; of the
        # others, the store's worker is the one that works (the rest wait: resolver, ...).
        loop = sum(thread_cpu_seconds(proc.pid, proc.pid) for proc in self.procs)
        return Sample(
            found, loop, rig.cpu_seconds(os.getpid()), machine_busy_s(), time.perf_counter()
        )

    def spent(self, before: Sample, after: Sample) -> Cpu:
        """CPU seconds between two samples."""
        mine = {proc.pid for proc in self.procs}
        daemons = cluster = 0.0
        for pid, seconds in after.pids.items():
            used = seconds - before.pids.get(pid, 0.0)  # a backend started meanwhile: all of it
            if pid in mine:
                daemons += used
            else:
                cluster += used
        return Cpu(
            talkbot=daemons,
            loop=after.loop - before.loop,
            processes=len(self.procs),
            postgres=cluster,
            bench=after.bench - before.bench,
            machine=after.machine - before.machine,
            wall=after.at - before.at,
        )

    async def admin(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement as the superuser in the ``postgres`` database; its rows."""
        assert self.pg is not None
        async with await psycopg.AsyncConnection.connect(self.pg.url(), autocommit=True) as conn:
            cursor = await conn.execute(query.encode(), params)
            return [] if cursor.description is None else await cursor.fetchall()

    async def pg_counters(self) -> PgCounters | None:
        """WAL fsyncs (count, ms) of the cluster and commits in this setup's database."""
        if self.pg is None:
            return None
        await asyncio.sleep(STATS_SETTLE_S)
        [row] = await self.admin(
            "SELECT w.wal_sync, w.wal_sync_time, d.xact_commit FROM pg_stat_wal w,"
            " pg_stat_database d WHERE d.datname = %s",
            (self.database,),
        )
        return PgCounters(int(row[0]), float(row[1]), int(row[2]))

    def inbox(self) -> Inbox:
        """How many webhooks the store holds, and how many of them are not handled yet."""
        query = (
            "SELECT count(*), count(*) FILTER (WHERE status IN ('pending', 'running')) FROM inbox"
        )
        if self.pg is None:
            path = self.homes[0] / "talkbot.sqlite3"
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                row = db.execute(query).fetchone()
        else:
            assert self.database is not None
            with psycopg.connect(self.pg.url(self.database)) as conn:
                row = conn.execute(query).fetchone()
        assert row is not None
        return Inbox(int(row[0]), int(row[1]))

    def repeats(self) -> tuple[int, int]:
        """Events started more than once; user messages in the history more than once."""
        query = (
            "SELECT (SELECT count(*) FROM inbox WHERE attempts > 1),"
            " (SELECT count(*) FROM (SELECT room, message_id FROM history WHERE role = 'user'"
            " AND message_id IS NOT NULL GROUP BY room, message_id HAVING count(*) > 1) AS d)"
        )
        if self.pg is None:
            path = self.homes[0] / "talkbot.sqlite3"
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                row = db.execute(query).fetchone()
        else:
            assert self.database is not None
            with psycopg.connect(self.pg.url(self.database)) as conn:
                row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def logged(self) -> collections.Counter[str]:
        """Events the processes logged at warning level or above, by level and name."""
        found: collections.Counter[str] = collections.Counter()
        for proc in self.procs:
            for line in proc.log.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    found[f"(not JSON) {line[:80]}"] += 1
                    continue
                if not isinstance(entry, dict):
                    continue
                level = str(entry.get("level", "")).lower()
                if level in ("warning", "error", "critical"):
                    found[f"{level} {entry.get('event')}"] += 1
        return found


@dataclass(frozen=True)
class Inbox:
    rows: int
    open: int  # pending or running: not handled yet

    @property
    def handled(self) -> int:
        return self.rows - self.open


@dataclass(frozen=True)
class Sample:
    pids: dict[int, float]
    loop: float  # the talkbot processes' main threads (the event loop)
    bench: float
    machine: float
    at: float


@dataclass(frozen=True)
class Cpu:
    """CPU seconds spent in a window, and its length."""

    talkbot: float  # every talkbot process
    loop: float  # their event loop threads (the rest: the store's worker, mostly)
    processes: int
    postgres: float  # every process of the cluster
    bench: float  # this process: the load generator and the fakes
    machine: float  # every process on the machine, neighbours' included
    wall: float

    @property
    def ours(self) -> float:
        return self.talkbot + self.postgres + self.bench

    def busy(self, seconds: float) -> float:
        """Cores busy, on average over the window."""
        return seconds / self.wall

    def threads(self) -> str:
        """How busy one talkbot process's loop and store threads were (cores, mean)."""
        n = self.processes
        others = self.talkbot - self.loop
        return f"loop {self.busy(self.loop) / n:.2f}, other threads {self.busy(others) / n:.2f}"


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User plus system CPU time of one thread."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / rig.CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / rig.CLOCK_TICKS  # guest time is in user already


@dataclass(frozen=True)
class PgCounters:
    wal_syncs: int
    wal_sync_ms: float
    commits: int

    def __sub__(self, other: PgCounters) -> PgCounters:
        return PgCounters(
            self.wal_syncs - other.wal_syncs,
            self.wal_sync_ms - other.wal_sync_ms,
            self.commits - other.commits,
        )


@contextlib.asynccontextmanager
async def running(
    setup: str,
    tmp: Path,
    pg: PostgresServer,
    *,
    talk_url: str,
    llm_url: str,
    extra: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[Running]:
    """The setup's processes on a fresh store; killed (and the database dropped) after."""
    n = next(_databases)
    database = None if setup == SQLITE else f"bench{n}"
    config = {section: dict(values) for section, values in (extra or {}).items()}
    if database is not None:
        config.setdefault("storage", {})["url"] = pg.create_database(database)
    try:
        async with contextlib.AsyncExitStack() as stack:
            procs: list[rig.Process] = []
            homes: list[Path] = []
            for replica in range(2 if setup == REPLICAS else 1):
                home = tmp / f"run{n}-{replica}"
                home.mkdir()
                homes.append(home)
                serve = rig.talkbot(home, talk_url=talk_url, llm_url=llm_url, extra=config)
                procs.append(await stack.enter_async_context(serve))
            try:
                yield Running(setup, procs, homes, pg if database else None, database)
            except BaseException:
                for proc in procs:  # the directory goes with the run
                    tail = proc.log.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- the end of {proc.log}:", *tail, sep="\n")
                raise
    finally:
        if database is not None:
            pg.drop_database(database)


def config_extra(setup: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if setup != SQLITE and args.lease_s is not None:
        return {"storage": {"lease_s": args.lease_s}}
    return {}


class HeartbeatWatch:
    """Polls the replicas table (PostgreSQL): the longest each replica went without a
    heartbeat, as this process saw it (they are due every lease_s / 5, 3 s by default)."""

    def __init__(self, run: Running) -> None:
        self._run = run
        self.gaps: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HeartbeatWatch:
        if self._run.pg is not None:
            self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        assert self._run.pg is not None
        assert self._run.database is not None
        last: dict[str, tuple[float, float]] = {}  # replica -> (seen_at, when it changed)
        url = self._run.pg.url(self._run.database)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while True:
                cursor = await conn.execute("SELECT id, seen_at FROM replicas")
                now = time.monotonic()
                for replica, seen in await cursor.fetchall():
                    previous = last.get(replica)
                    if previous is None or previous[0] != seen:
                        if previous is not None:
                            gap = now - previous[1]
                            self.gaps[replica] = max(self.gaps.get(replica, 0.0), gap)
                        last[replica] = (seen, now)
                await asyncio.sleep(0.1)


# -- ingest ----------------------------------------------------------------------------------


def merged(loads: Sequence[rig.Load]) -> rig.Load:
    """Loads that ran side by side, as one."""
    total = rig.Load(seconds=max(load.seconds for load in loads))
    for load in loads:
        total.latencies += load.latencies
        total.errors += load.errors
        for status, count in load.statuses.items():
            total.statuses[status] = total.statuses.get(status, 0) + count
    return total


async def spread(
    urls: Sequence[str], requests: Callable[[], rig.Request], *, connections: int, seconds: float
) -> rig.Load:
    """bench.rig's closed loop with the connections shared out over ``urls``."""
    shares = [connections // len(urls) + (i < connections % len(urls)) for i in range(len(urls))]
    loads = await asyncio.gather(
        *(
            rig.closed_loop(url, requests, connections=share, seconds=seconds)
            for url, share in zip(urls, shares, strict=True)
            if share
        )
    )
    return merged(loads)


@dataclass
class IngestRun:
    setup: str
    connections: int  # 0: the paced run
    load: rig.Load
    cpu: Cpu
    pg: PgCounters | None
    statements: list[tuple[float, float, str]]  # calls per ack, mean ms, the statement
    handled_rate: float  # webhooks handled (not just stored) per second meanwhile

    def per_ack_us(self, seconds: float) -> float:
        return 1e6 * seconds / max(1, self.load.count)


async def ingest_run(
    run: Running, args: argparse.Namespace, connections: int, *, rate: float | None = None
) -> IngestRun:
    """A one-second warm-up, then a measured closed loop (or a paced run at ``rate``)."""
    if rate is None:
        warm = ingest.prepared(args.rooms, args.addressed_every, 2000)
        warm_load = await spread(run.urls, warm, connections=connections, seconds=1.0)
        run.acked += warm_load.statuses.get(200, 0)
    count = int(args.seconds * (rate or min(6000, 1500 * connections))) + 10
    requests = ingest.prepared(args.rooms, args.addressed_every, count)
    counters_before = await run.pg_counters()
    if args.statements and run.pg is not None:
        await run.admin("SELECT pg_stat_statements_reset()")
    inbox_before = run.inbox()
    before = run.sample()
    if rate is None:
        load = await spread(run.urls, requests, connections=connections, seconds=args.seconds)
    else:
        assert len(run.urls) == 1  # as bench.ingest.at_rate, with the requests made already
        load = await rig.paced(
            run.urls[0], requests, rate=rate, seconds=args.seconds, connections=connections
        )
    cpu = run.spent(before, run.sample())
    inbox_after = run.inbox()
    run.acked += load.statuses.get(200, 0)
    counters = await run.pg_counters()
    delta = None if counters is None or counters_before is None else counters - counters_before
    statements = []
    if args.statements and run.pg is not None:
        rows = await run.admin(
            "SELECT calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 100)"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = %s AND calls > 0 ORDER BY calls DESC LIMIT 12",
            (run.database,),
        )
        statements = [(n / max(1, load.count), ms / n, str(q)) for n, ms, q in rows]
    handled = inbox_after.handled - inbox_before.handled
    return IngestRun(
        run.setup, 0 if rate else connections, load, cpu, delta, statements, handled / cpu.wall
    )


@dataclass
class Checks:
    """What went wrong, by setup: lost webhooks, missing or repeated answers, log lines."""

    problems: list[str] = field(default_factory=list)
    logged: dict[str, collections.Counter[str]] = field(default_factory=dict)
    heartbeat_gaps: dict[str, list[float]] = field(default_factory=dict)

    def once(self, label: str, run: Running, talk: FakeTalk) -> None:
        """Each webhook handled once, each message answered at most once."""
        started_again, history_twice = run.repeats()
        if started_again or history_twice:
            self.problems.append(
                f"{label}: {started_again} events started more than once, {history_twice} "
                "messages written to the history more than once"
            )
        answers = collections.Counter(m.reply_to for m in talk.messages if m.reply_to)
        if twice := sum(1 for n in answers.values() if n > 1):
            self.problems.append(
                f"{label}: {twice} of {len(answers)} messages answered more than once"
            )

    def log_of(self, label: str, run: Running) -> None:
        self.logged.setdefault(label, collections.Counter()).update(run.logged())


@dataclass(frozen=True)
class Quiet:
    """The seconds after the load: CPU, and webhooks still being handled meanwhile."""

    cpu: Cpu
    handled: int
    open_after: int


async def after_load(run: Running, seconds: float) -> Quiet:
    """No traffic: what the processes still do (a backlog, or open rooms to sweep)."""
    inbox_before = run.inbox()
    before = run.sample()
    await asyncio.sleep(seconds)
    cpu = run.spent(before, run.sample())
    inbox_after = run.inbox()
    return Quiet(cpu, inbox_after.handled - inbox_before.handled, inbox_after.open)


async def ingest_round(
    setup: str, tmp: Path, pg: PostgresServer, args: argparse.Namespace, checks: Checks
) -> tuple[list[IngestRun], Quiet]:
    levels = [c for c in args.connections if setup != REPLICAS or c >= 2]
    extra = config_extra(setup, args)
    if args.ingest_model_latency is not None:
        extra.setdefault("llm", {})["concurrency"] = 32
    async with (
        FakeTalk(rig.SECRET) as talk,
        FakeLLM() as llm,
        running(setup, tmp, pg, talk_url=talk.url, llm_url=llm.base_url, extra=extra) as run,
        HeartbeatWatch(run) as heartbeats,
    ):
        if args.ingest_model_latency is None:
            llm.latency_s = 3600.0  # stalled: no turn ever gets an answer
        else:
            llm.echo = True
            llm.latency_s = args.ingest_model_latency
        runs = [await ingest_run(run, args, connections) for connections in levels]
        if setup != REPLICAS and args.steady_rate:
            runs.append(await ingest_run(run, args, 32, rate=args.steady_rate))
        quiet = await after_load(run, 3.0)
        stored = run.inbox().rows
        if stored != run.acked:
            checks.problems.append(
                f"ingest {setup}: {run.acked} webhooks acknowledged, {stored} in the inbox"
            )
        checks.once(f"ingest {setup}", run, talk)
        checks.log_of(f"ingest {setup}", run)
    checks.heartbeat_gaps.setdefault(setup, []).extend(heartbeats.gaps.values())
    for one in runs:
        cpu = one.cpu
        print(
            f"  ingest {setup:11} {label(one.connections):>8}: {one.load.summary()}; handled "
            f"{one.handled_rate:,.0f}/s; CPU µs/ack: "
            f"talkbot {one.per_ack_us(cpu.talkbot):.0f}, "
            f"postgres {one.per_ack_us(cpu.postgres):.0f}, "
            f"bench {one.per_ack_us(cpu.bench):.0f}; cores busy: ours "
            f"{cpu.busy(cpu.ours):.2f}, machine {cpu.busy(cpu.machine):.2f}; talkbot "
            f"{cpu.threads()}",
            flush=True,
        )
        for calls, ms, query in one.statements:
            print(f"      {calls:5.2f}/ack {ms:6.3f} ms  {query}")
        bad = {s: n for s, n in one.load.statuses.items() if s != 200}
        if bad or one.load.errors:
            checks.problems.append(
                f"ingest {setup} {label(one.connections)}: non-200 statuses {bad}, "
                f"{one.load.errors} requests got no HTTP answer (connection closed or reset)"
            )
    return runs, quiet


def label(connections: int) -> str:
    return f"{connections} conns" if connections else "paced"


# -- turns -----------------------------------------------------------------------------------


@dataclass
class TurnsRun:
    setup: str
    rooms: int
    acked_s: float
    elapsed_s: float
    cpu: Cpu
    timeline: str
    second_s: float  # the second question of every room (via the other replica on two)


# bench.turns asks "what time is it?" in one-to-one rooms, which talkbot no longer answers
# unaddressed (a one-to-one room follows the group rule since 374d43b): its warm-up waits
# forever. Here the question names the bot.
QUESTION = "talkbot, what time is it?"


async def post_spread(urls: Sequence[str], rooms: Sequence[str], shift: int) -> list[int]:
    """One question per room, all at once; room i's to replica (i + shift) mod n."""
    n = len(urls)
    requests = [
        (urls[(i + shift) % n], rig.signed(rig.chat_event(QUESTION, room, one_to_one=True)))
        for i, room in enumerate(rooms)
    ]
    async with rig.session(len(rooms)) as http:

        async def one(url: str, request: rig.Request) -> int:
            body, headers = request
            async with http.post(url, data=body, headers=headers) as resp:
                return resp.status

        return await asyncio.gather(*(one(url, request) for url, request in requests))


async def drained(run: Running) -> None:
    await asyncio.gather(*(rig.wait_drained(proc) for proc in run.procs))


async def turns_round(
    setup: str, tmp: Path, pg: PostgresServer, args: argparse.Namespace, checks: Checks
) -> TurnsRun:
    rooms = [f"turnroom{i:04d}" for i in range(args.turn_rooms)]
    extra = config_extra(setup, args)
    extra["llm"] = {"concurrency": min(256, args.turn_rooms)}
    async with (
        FakeTalk(rig.SECRET) as talk,
        rig.ToolRoundModel(args.latency) as model,
        running(setup, tmp, pg, talk_url=talk.url, llm_url=model.url, extra=extra) as run,
    ):
        # One turn on every replica first: a long-running daemon has its clients set up.
        warm_rooms = [f"warmup{i:02d}" for i in range(len(run.procs))]
        await post_spread(run.urls, warm_rooms, 0)
        await talk.wait_for_messages(len(warm_rooms), timeout=60)
        await drained(run)
        talk.messages.clear()
        talk.requests.clear()
        model.arrivals.clear()
        model.requests = model.max_in_flight = 0

        before = run.sample()
        started = time.perf_counter()
        wall_offset = time.time() - started  # FakeTalk stamps messages with time.time()
        statuses = await post_spread(run.urls, rooms, 0)
        acked = time.perf_counter() - started
        answers = await talk.wait_for_messages(len(rooms), timeout=120)
        elapsed = time.perf_counter() - started
        await drained(run)
        cpu = run.spent(before, run.sample())
        posted = [m.at - wall_offset for m in answers]
        line = turns.timeline(started, model.arrivals, posted)

        # The second question of each room, through the other replica (on two).
        second_started = time.perf_counter()
        statuses += await post_spread(run.urls, rooms, 1)
        await talk.wait_for_messages(2 * len(rooms), timeout=120)
        second = time.perf_counter() - second_started
        await drained(run)
        await asyncio.sleep(1.0)  # a late duplicate would show up here (sweeps: 0.5 s)
        answered = collections.Counter(m.token for m in talk.messages)
        checks.once(f"turns {setup}", run, talk)
        checks.log_of(f"turns {setup}", run)
    wrong = {room: answered[room] for room in rooms if answered[room] != 2}
    if wrong:
        checks.problems.append(f"turns {setup}: rooms not answered exactly twice: {wrong}")
    if extra_rooms := set(answered) - set(rooms):
        checks.problems.append(f"turns {setup}: messages to rooms never asked: {extra_rooms}")
    if set(statuses) != {200}:
        checks.problems.append(f"turns {setup}: statuses {collections.Counter(statuses)}")
    result = TurnsRun(setup, len(rooms), acked, elapsed, cpu, line, second)
    print(
        f"  turns  {setup:11}: all {len(rooms)} answered after {elapsed:.2f} s "
        f"(acked in {acked:.2f} s), second questions after {second:.2f} s; daemons "
        f"{1000 * cpu.talkbot / len(rooms):.1f} ms/turn, postgres "
        f"{1000 * cpu.postgres / len(rooms):.1f} ms/turn; cores busy: ours "
        f"{cpu.ours / cpu.wall:.2f}, machine {cpu.machine / cpu.wall:.2f}",
        flush=True,
    )
    print(f"    {line}", flush=True)
    return result


# -- the report ------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def report_ingest(runs: list[IngestRun], quiet: dict[str, list[Quiet]]) -> None:
    print("\nIngest (medians over the rounds; CPU per acknowledged webhook):\n")
    print(
        "| setup | load | acks/s | handled/s | p50 ms | p99 ms | CPU µs/ack: talkbot | PostgreSQL"
        " | bench |"
        " WAL fsyncs/ack | fsync ms | PG commits/ack | cores busy: ours | machine |"
        " talkbot loop | other threads |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    table: dict[tuple[str, int], dict[str, float]] = {}
    for (setup, connections), group in itertools.groupby(
        sorted(runs, key=lambda r: (SETUPS.index(r.setup), r.connections or 10**6)),
        key=lambda r: (r.setup, r.connections),
    ):
        rows = list(group)
        figures = {
            "rate": med([r.load.rate for r in rows]),
            "handled": med([r.handled_rate for r in rows]),
            "p50": med([r.load.percentile_ms(50) for r in rows]),
            "p99": med([r.load.percentile_ms(99) for r in rows]),
            "daemon": med([r.per_ack_us(r.cpu.talkbot) for r in rows]),
            "cluster": med([r.per_ack_us(r.cpu.postgres) for r in rows]),
            "bench": med([r.per_ack_us(r.cpu.bench) for r in rows]),
            "ours": med([r.cpu.ours / r.cpu.wall for r in rows]),
            "machine": med([r.cpu.machine / r.cpu.wall for r in rows]),
            "loop": med([r.cpu.busy(r.cpu.loop) / r.cpu.processes for r in rows]),
            "others": med([r.cpu.busy(r.cpu.talkbot - r.cpu.loop) / r.cpu.processes for r in rows]),
        }
        pg_rows = [(r.load.count, r.pg) for r in rows if r.pg is not None]
        syncs = med([c.wal_syncs / max(1, n) for n, c in pg_rows])
        sync_ms = med([c.wal_sync_ms / c.wal_syncs for _, c in pg_rows if c.wal_syncs])
        commits = med([c.commits / max(1, n) for n, c in pg_rows])
        table[setup, connections] = figures
        pg_cols = (
            f"{figures['cluster']:.0f} | {figures['bench']:.0f} | {syncs:.2f} | {sync_ms:.2f} | "
            f"{commits:.2f}"
            if pg_rows
            else f"- | {figures['bench']:.0f} | - | - | -"
        )
        print(
            f"| {setup} | {label(connections)} | {figures['rate']:,.0f} | "
            f"{figures['handled']:,.0f} | {figures['p50']:.1f} | "
            f"{figures['p99']:.1f} | {figures['daemon']:.0f} | {pg_cols} | "
            f"{figures['ours']:.2f} | {figures['machine']:.2f} | {figures['loop']:.2f} | "
            f"{figures['others']:.2f} |"
        )
    print("\nPostgreSQL / SQLite, and two replicas / one (both on PostgreSQL):\n")
    print("| | load | acks/s | p99 | talkbot CPU/ack | all CPU/ack (talkbot + PostgreSQL) |")
    print("|---|---|---|---|---|---|")
    for (a, b), name in (
        ((POSTGRES, SQLITE), "PostgreSQL / SQLite"),
        ((REPLICAS, POSTGRES), "2 / 1 replicas"),
    ):
        for connections in sorted({c for s, c in table if s == a}, key=lambda c: c or 10**6):
            x, y = table.get((a, connections)), table.get((b, connections))
            if x is None or y is None:
                continue
            print(
                f"| {name} | {label(connections)} | {ratio(x['rate'], y['rate'])} | "
                f"{ratio(x['p99'], y['p99'])} | {ratio(x['daemon'], y['daemon'])} | "
                f"{ratio(x['daemon'] + x['cluster'], y['daemon'] + y['cluster'])} |"
            )
    print(
        "\nThe 3 s after the last load (no traffic; with the model stalled every room keeps "
        "open work):"
    )
    for setup, values in quiet.items():
        daemons = med([1000 * v.cpu.busy(v.cpu.talkbot) for v in values])
        cluster = med([1000 * v.cpu.busy(v.cpu.postgres) for v in values])
        machine = med([v.cpu.busy(v.cpu.machine) for v in values])
        handled = med([v.handled / v.cpu.wall for v in values])
        still = med([v.open_after for v in values])
        print(
            f"  {setup:11}: still handling {handled:,.0f} webhooks/s ({still:,.0f} open after); "
            f"talkbot {daemons:.0f} ms CPU/s, PostgreSQL {cluster:.0f} ms CPU/s; the machine "
            f"{machine:.2f} cores busy"
        )


def report_turns(runs: list[TurnsRun], latency: float) -> None:
    ideal = 2 * latency
    print(f"\nTurns (medians over the rounds; model {latency:g} s per call, ideal {ideal:g} s):\n")
    print(
        "| setup | rooms | all answered after | x ideal | answers/s | talkbot CPU ms/turn | "
        "PostgreSQL CPU ms/turn | 2nd question, all answered after | cores busy: ours | "
        "machine |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rates = {}
    for setup in SETUPS:
        rows = [r for r in runs if r.setup == setup]
        if not rows:
            continue
        elapsed = med([r.elapsed_s for r in rows])
        rates[setup] = med([r.rooms / r.elapsed_s for r in rows])
        print(
            f"| {setup} | {rows[0].rooms} | {elapsed:.2f} s | {elapsed / ideal:.2f} | "
            f"{rates[setup]:.0f} | {med([1000 * r.cpu.talkbot / r.rooms for r in rows]):.1f} | "
            f"{med([1000 * r.cpu.postgres / r.rooms for r in rows]):.1f} | "
            f"{med([r.second_s for r in rows]):.2f} s | "
            f"{med([r.cpu.ours / r.cpu.wall for r in rows]):.2f} | "
            f"{med([r.cpu.machine / r.cpu.wall for r in rows]):.2f} |"
        )
    if SQLITE in rates and POSTGRES in rates:
        print(f"\nanswers/s PostgreSQL / SQLite: {ratio(rates[POSTGRES], rates[SQLITE])}")
    if REPLICAS in rates and POSTGRES in rates:
        print(f"answers/s 2 replicas / 1: {ratio(rates[REPLICAS], rates[POSTGRES])}")


def report_checks(checks: Checks) -> None:
    print("\nChecks:")
    if not checks.problems:
        print("  every acknowledged webhook is in the inbox, every event started once, every")
        print("  message in the history once; every room answered exactly once per question;")
        print("  every status 200")
    for problem in checks.problems:
        print(f"  PROBLEM: {problem}")
    for setup, gaps in checks.heartbeat_gaps.items():
        if gaps:
            print(
                f"  {setup}: the longest time a replica went without a heartbeat: {max(gaps):.2f} s"
            )
    print("Logged at warning level or above (all rounds):")
    for where, counts in checks.logged.items():
        shown = ", ".join(f"{event} x{n}" for event, n in counts.most_common()) or "nothing"
        print(f"  {where}: {shown}")


# -- main ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {rig.machine()}")
    checks = Checks()
    ingest_runs: list[IngestRun] = []
    quiet: dict[str, list[Quiet]] = {}
    turns_runs: list[TurnsRun] = []
    settings = {"track_wal_io_timing": "on"}
    if args.statements:
        settings["shared_preload_libraries"] = "pg_stat_statements"
    with (
        PostgresServer(durable=True, parent=args.dir, settings=settings) as pg,
        rig.workdir() as tmp,
    ):
        with pg.connect() as conn:
            if args.statements:
                conn.execute("CREATE EXTENSION pg_stat_statements")
            shown = {
                name: conn.execute(f"SHOW {name}").fetchone()
                for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes")
            }
        print(
            "server: PostgreSQL "
            + ", ".join(f"{k}={v[0] if v else '?'}" for k, v in shown.items())
            + f", data in {pg.data_dir}; talkbot's SQLite in {tmp}"
        )
        model = (
            "model stalled"
            if args.ingest_model_latency is None
            else f"model answers after {args.ingest_model_latency:g} s"
        )
        lease = "" if args.lease_s is None else f"; [storage] lease_s {args.lease_s:g}"
        print(
            f"ingest: {args.rooms} rooms, every {args.addressed_every}th message names the bot "
            f"({model}); 1 s warm-up + {args.seconds:g} s at {args.connections} "
            f"connections, paced {args.steady_rate:g}/s; turns: {args.turn_rooms} rooms, "
            f"model {args.latency:g} s per call; {args.repeat} rounds{lease}",
            flush=True,
        )
        for round_no in range(args.repeat):
            order = SETUPS[round_no % 3 :] + SETUPS[: round_no % 3]
            for setup in order:
                if setup in args.setups:
                    runs, after = await ingest_round(setup, tmp, pg, args, checks)
                    ingest_runs += runs
                    quiet.setdefault(setup, []).append(after)
            for setup in order:
                if setup in args.setups and args.turn_rooms:
                    turns_run = await turns_round(setup, tmp, pg, args, checks)
                    turns_runs.append(turns_run)
    print(f"\nmachine after: {rig.machine()}")
    report_ingest(ingest_runs, quiet)
    if turns_runs:
        report_turns(turns_runs, args.latency)
    report_checks(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per ingest run")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[1, 8, 32], help="ingest concurrency levels"
    )
    parser.add_argument("--rooms", type=int, default=100, help="ingest rooms")
    parser.add_argument("--addressed-every", type=int, default=20)
    parser.add_argument(
        "--steady-rate", type=float, default=100.0, help="paced ingest, webhooks/s (0: none)"
    )
    parser.add_argument("--turn-rooms", type=int, default=200, help="turns rooms (0: no turns)")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of every setup")
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument(
        "--lease-s", type=float, default=None, help="[storage] lease_s of the PostgreSQL setups"
    )
    parser.add_argument(
        "--ingest-model-latency",
        type=float,
        default=None,
        help="ingest: the model answers (echo) after this many seconds instead of stalling",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="PostgreSQL runs: print the statements per webhook (pg_stat_statements)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="parent of the PostgreSQL cluster's directory"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
