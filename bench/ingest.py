"""Ingest: signed webhooks/s and ack latency of `talkbot serve` against two references.

    .venv/bin/python -m bench.ingest [--seconds 5] [--connections 32] [--low-connections 4]
                                     [--repeat 3] [--synchronous full|normal]

Three servers, each a subprocess on 127.0.0.1, get the same load from the same client (an
aiohttp client in this process), taking turns run by run so a noisy neighbour hurts all
alike:

- bare: an aiohttp app that checks the signature and answers 200. It stores nothing: the
  cost of HTTP and HMAC alone, an upper bound no durable daemon reaches (info).
- limit, the durable limit: the bare app plus talkbot's own inbox INSERT, group-committed
  by one writer thread, answering 200 only once the row is committed. The honest limit for
  a daemon that acknowledges only what it stored; talkbot's goals are set against it.
- talkbot: `talkbot serve` with a real config, a fake Talk and a model that never answers
  (stalled), so every turn it starts waits forever: what is measured is verify, parse,
  store, route.

With --floors two more servers run, interleaved the same way (info): the limit plus
talkbot's own parse and routing of each message (routed), and plus its history row as well
(recorded), without any of talkbot's plumbing (``Recorded``): floors under what talkbot can
cost, and the history row's share.

Measured for each: the peak rate closed-loop at --connections (goal: talkbot >= 0.9 x the
limit), the p99 ack closed-loop at --low-connections (goal: talkbot <= 1.5 x the limit),
the p99 paced at half the limit's peak and at a busy Talk server's rate, the server CPU
per webhook, and the size of the SQLite write-ahead log of talkbot and of the limit,
sampled every 100 ms. --synchronous applies to both talkbot and the limit.
Traffic: group rooms in "mention" mode; every Nth message names the bot (a turn that
stalls, after which that room's queue fills and overflows, as it would in production).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from bench import rig
from bot.access import Access
from bot.clock import ManualClock, SystemClock
from bot.config import AccessSettings, ChatSettings, ConfirmSettings
from bot.handlers.router import SETTLED_ROUTES, Router
from bot.routing import RoutingPolicy, classify
from bot.store.engine import Engine, Row
from bot.store.history import INSERT_HISTORY, history_row
from bot.store.inbox import INSERT_EVENT, Inbox, event_params
from bot.store.sqlite import SqliteDriver, Synchronous
from bot.talk.events import EventParseError, bot_actor_id, message_key, parse_event
from bot.talk.signature import RANDOM_HEADER, SIGNATURE_HEADER, verify_webhook
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk

# talkbot against the durable limit: its median peak at least this share of the limit's,
GOAL_PEAK_RATIO = 0.9
# and its p99 ack at --low-connections at most this multiple of the limit's.
GOAL_LOW_P99_RATIO = 1.5

SERVERS = ("bare", "limit", "talkbot")


# -- the bare app: checks the signature, answers 200 ----------------------------------------


def _verified(request: web.Request, body: bytes) -> str | None:
    """The webhook's random if its signature is right, else None."""
    random = request.headers.get(RANDOM_HEADER)
    ok = verify_webhook(rig.SECRET, random, body, request.headers.get(SIGNATURE_HEADER))
    return random if ok and random is not None else None


async def _baseline_webhook(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(status=200 if _verified(request, body) is not None else 401)


async def _baseline_ready(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def serve_baseline(port: int) -> None:
    app = web.Application()
    app.router.add_post("/webhook", _baseline_webhook)
    app.router.add_get("/readyz", _baseline_ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- the durable limit: the bare app plus talkbot's inbox INSERT, group-committed -----------

Params = tuple[Any, ...]
Statements = tuple[tuple[str, Params], ...]
_PRAGMA_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


def insert_params(body: bytes, random: str, now: float) -> Params:
    """INSERT_EVENT's parameters for a Create or Activity, built as Inbox.accept_event
    builds them; only the room, kind and message id are read from the body."""
    data = json.loads(body)
    kind = data["type"]
    if kind not in ("Create", "Activity"):
        raise ValueError(f"the limit takes messages only, not {kind!r}")
    room = data["target"]["id"]
    number = str(data["object"]["id"])
    message_id = int(number) if number.isascii() and number.isdigit() else None
    key = message_key(kind, room, number)
    return event_params(
        room=room,
        kind=kind,
        body=body,
        random=random,
        dedupe_key=key,
        message_id=message_id,
        now=now,
    )


class _CapturingTx:
    dialect = "sqlite"

    def __init__(self) -> None:
        self.statements: list[tuple[str, Params]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _OneRow:
        self.statements.append((sql, tuple(params)))
        return _OneRow()


class _OneRow:
    def fetchall(self) -> list[Row]:
        return [{"id": 1}]


class _CapturingEngine:
    def __init__(self) -> None:
        self.tx = _CapturingTx()

    async def apply(self, work: Callable[[_CapturingTx], Any], *, budget_s: float) -> Any:  # noqa: ARG002 - Engine.apply's signature
        return work(self.tx)


def check_matches_talkbot() -> None:
    """Refuse to start when talkbot's intake no longer writes what insert_params builds:
    one webhook through talkbot's own parse and Inbox.accept_event (as bot/webhook.py calls
    it) on a capturing engine, against the limit's statement and parameters."""
    body, headers = rig.signed(rig.chat_event("check", "room0000"))
    clock, engine, event = ManualClock(), _CapturingEngine(), parse_event(body)
    inbox = Inbox()
    inbox._engine = cast("Engine", engine)
    inbox._clock = clock
    random = headers[RANDOM_HEADER]
    asyncio.run(
        inbox.accept_event(
            room=event.room.token,
            kind=event.type,
            body=body,
            random=random,
            dedupe_key=event.dedupe_key,
            message_id=event.talk_message_number,
        )
    )
    ours = [(INSERT_EVENT, insert_params(body, random, clock.now()))]
    if engine.tx.statements != ours:
        raise SystemExit(
            "bench.ingest: the durable limit no longer matches Inbox.accept_event; update"
            f" insert_params.\n talkbot: {engine.tx.statements}\n limit:   {ours}"
        )


class DurableLimit:
    """The bare app plus talkbot's inbox INSERT, group-committed by one writer thread.

    The simple honest design, not a tuned one: one connection in WAL mode with talkbot's
    PRAGMA synchronous and SQLite's default autocheckpoint (every 1000 pages, run inside
    the COMMIT that crosses it, on the writer thread), talkbot's schema and indexes, and
    its INSERT statement. The webhooks waiting when the writer is free go to it as one
    batch: BEGIN IMMEDIATE, one INSERT each, COMMIT; those arriving meanwhile form the
    next batch. Each gets its 200 only after its row's commit.
    """

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        # Created through talkbot's own code, so it has talkbot's current schema.
        driver, _ = SqliteDriver.open(path, SystemClock(), synchronous=synchronous)
        driver.close()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={_PRAGMA_SYNCHRONOUS[synchronous]}")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="limit-writer")
        self._batch: list[tuple[Statements, asyncio.Future[None]]] = []
        self._writing = False  # a batch is with the writer, or about to be handed to it

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        random = _verified(request, body)
        if random is None:
            return web.Response(status=401)
        try:
            statements = self.statements(body, random, time.time())
        except (ValueError, KeyError, TypeError, EventParseError):
            return web.Response(status=400)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._batch.append((statements, done))
        if not self._writing:
            self._writing = True
            loop.call_soon(self._hand_over, loop)  # webhooks of this loop tick join it
        await done
        return web.Response(status=200)

    def statements(self, body: bytes, random: str, now: float) -> Statements:
        """What the writer runs for one webhook: its inbox row."""
        return ((INSERT_EVENT, insert_params(body, random, now)),)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: the whole waiting list to the writer thread."""
        batch, self._batch = self._batch, []
        self._writer.submit(self._commit, loop, batch)

    def _commit(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Statements, asyncio.Future[None]]]
    ) -> None:
        """On the writer thread: one transaction for the batch, then its answers."""
        error: Exception | None = None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for ((sql, params), *rest), _ in batch:
                if self._db.execute(sql, params).fetchall():  # a repeat: nothing more
                    for more in rest:
                        self._db.execute(*more)
            self._db.execute("COMMIT")
        except Exception as exc:
            error = exc
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        loop.call_soon_threadsafe(self._committed, loop, batch, error)

    def _committed(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Statements, asyncio.Future[None]]],
        error: Exception | None,
    ) -> None:
        """On the loop: answer the batch, hand over what came meanwhile."""
        for _, done in batch:
            if done.done():  # its client went away
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        if self._batch:
            self._hand_over(loop)
        else:
            self._writing = False


class Recorded(DurableLimit):
    """The durable limit plus talkbot's own work for each message (info): its parse
    (``parse_event``), role and routing (``Access.role_of``, ``classify``, with the
    benchmark's [access] and [chat]); a message that is nothing for the bot is stored
    done, with its history row in the same commit when ``history`` (``recorded``), without
    it when not (``routed``); any other event is stored pending. No room registry, no
    trimming, no queue, no budget or health: floors under what talkbot can cost, to read
    talkbot's distance from the limit against, and the history row's share of it."""

    def __init__(self, path: Path, synchronous: Synchronous, *, history: bool = True) -> None:
        super().__init__(path, synchronous)
        self._history = history
        access = AccessSettings(admins=("root",), admin_room="adminroom1")
        chat = ChatSettings(bot_name="talkbot")
        self._access = Access(access)
        self._policy = RoutingPolicy(access, chat, ConfirmSettings(), bot_actor_id("bench"))

    def statements(self, body: bytes, random: str, now: float) -> Statements:
        """As talkbot stores a message it settles (Router.settle_now, Inbox.accept_settled):
        done, with the history row Router.history_entry gives; any other event pending."""
        event = parse_event(body)
        role = self._access.role_of(event.actor.id)
        route = classify(event, role=role, policy=self._policy)
        settled = route.kind in SETTLED_ROUTES
        params = event_params(
            room=event.room.token,
            kind=event.type,
            body=body,
            random=random,
            dedupe_key=event.dedupe_key,
            message_id=event.talk_message_number,
            now=now,
            finished=("done", "") if settled else None,
        )
        entry = Router.history_entry(event, role) if settled and self._history else None
        if entry is None:
            return ((INSERT_EVENT, params),)
        return (INSERT_EVENT, params), (INSERT_HISTORY, history_row(event.room.token, entry, now))


FLOORS = ("routed", "recorded")


def serve_limit(port: int, store: Path, synchronous: Synchronous, kind: str = "limit") -> None:
    check_matches_talkbot()
    limit = (
        Recorded(store, synchronous, history=kind == "recorded")
        if kind in FLOORS
        else DurableLimit(store, synchronous)
    )
    app = web.Application()
    app.router.add_post("/webhook", limit.webhook)
    app.router.add_get("/readyz", _baseline_ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- traffic -------------------------------------------------------------------------------


def traffic(rooms: int, addressed_every: int) -> Callable[[], rig.Request]:
    """Signed Create webhooks, unique ids, spread at random over ``rooms`` group rooms."""
    rng = random.Random(9)  # noqa: S311 - a fixed seed: the same traffic in every run

    def bodies() -> Iterator[rig.Request]:
        for n in itertools.count(1):
            addressed = rng.randrange(addressed_every) == 0
            text = "talkbot, can you help?" if addressed else f"chatter {n}"
            yield rig.signed(rig.chat_event(text, f"room{rng.randrange(rooms):04d}"))

    source = bodies()
    return lambda: next(source)


def prepared(rooms: int, addressed_every: int, count: int) -> Callable[[], rig.Request]:
    """The same traffic, built before the clock starts so the client spends less per request."""
    make = traffic(rooms, addressed_every)
    ready = [make() for _ in range(count)]
    ready.reverse()
    return lambda: ready.pop() if ready else make()


async def peak(url: str, args: argparse.Namespace) -> rig.Load:
    """A one-second warm-up, then the closed-loop run that finds the peak rate."""
    warm = prepared(args.rooms, args.addressed_every, 2000)
    await rig.closed_loop(url, warm, connections=args.connections, seconds=1.0)
    requests = prepared(args.rooms, args.addressed_every, int(args.seconds * 6000))
    return await rig.closed_loop(url, requests, connections=args.connections, seconds=args.seconds)


async def low(url: str, args: argparse.Namespace) -> rig.Load:
    """Closed loop at a few connections: the ack latency when little waits to be batched."""
    requests = prepared(args.rooms, args.addressed_every, int(args.seconds * 2000))
    return await rig.closed_loop(
        url, requests, connections=args.low_connections, seconds=args.seconds
    )


async def at_rate(url: str, args: argparse.Namespace, rate: float) -> rig.Load:
    requests = prepared(args.rooms, args.addressed_every, int(rate * args.seconds) + 10)
    return await rig.paced(
        url, requests, rate=rate, seconds=args.seconds, connections=args.connections * 4
    )


def _median_p99(loads: list[rig.Load]) -> float:
    return statistics.median(load.percentile_ms(99) for load in loads)


@dataclass
class Rounds:
    """Every run of one server, in the order they ran (interleaved with the other servers)."""

    peaks: list[rig.Load] = field(default_factory=list)
    lows: list[rig.Load] = field(default_factory=list)  # closed loop at --low-connections
    halves: list[rig.Load] = field(default_factory=list)
    steady: list[rig.Load] = field(default_factory=list)  # at a fixed, modest rate

    def peak_rate(self) -> float:
        return statistics.median(load.rate for load in self.peaks)

    def low_p99_ms(self) -> float:
        return _median_p99(self.lows)

    def half_p99_ms(self) -> float:
        return _median_p99(self.halves)

    def steady_p99_ms(self) -> float:
        return _median_p99(self.steady)

    def cpu_us(self, cpu_s: float) -> float:
        """CPU per webhook; the warm-up runs (one second each) count as if measured."""
        runs = (*self.peaks, *self.lows, *self.halves, *self.steady)
        measured = sum(load.count for load in runs)
        warm = sum(load.rate for load in self.peaks)  # about one second at the peak rate
        return 1e6 * cpu_s / (measured + warm)


async def interleaved(
    servers: dict[str, rig.Process], args: argparse.Namespace
) -> tuple[dict[str, Rounds], float]:
    """The servers take turns run by run, so a noisy neighbour hurts them all alike."""
    rounds = {name: Rounds() for name in servers}
    for _ in range(args.repeat):
        for name, server in servers.items():
            rounds[name].peaks.append(await peak(server.webhook_url, args))
    for _ in range(args.repeat):
        for name, server in servers.items():
            rounds[name].lows.append(await low(server.webhook_url, args))
    # Half of what a durable daemon can take at all: a load talkbot should carry calmly.
    half_rate = rounds["limit"].peak_rate() / 2
    for _ in range(args.repeat):
        for name, server in servers.items():
            rounds[name].halves.append(await at_rate(server.webhook_url, args, half_rate))
    for _ in range(args.repeat):
        for name, server in servers.items():
            rounds[name].steady.append(await at_rate(server.webhook_url, args, args.steady_rate))
    return rounds, half_rate


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {rig.machine()}")
    print(
        f"load: {args.connections} connections ({args.low_connections} for the latency runs),"
        f" {args.seconds:g} s per run, {args.repeat} runs each, {args.rooms} rooms, every"
        f" {args.addressed_every}th message names the bot, synchronous {args.synchronous}"
    )
    bare_port, limit_port = rig.free_port(), rig.free_port()
    serve = [sys.executable, "-m", "bench.ingest"]
    bare_url, limit_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{limit_port}"
    with rig.workdir() as tmp:
        limit_store = tmp / "limit.sqlite3"
        limit_argv = [
            *serve,
            *("--serve-limit", str(limit_port), "--limit-store", str(limit_store)),
            *("--synchronous", args.synchronous),
        ]
        async with (
            rig.spawn(
                [*serve, "--serve-baseline", str(bare_port)], bare_url, tmp / "bare.log", "/readyz"
            ) as bare,
            rig.spawn(
                limit_argv, limit_url, tmp / "limit.log", "/readyz", store=limit_store
            ) as limit,
            FakeTalk(rig.SECRET) as talk,
            FakeLLM() as llm,
            rig.talkbot(
                tmp,
                talk_url=talk.url,
                llm_url=llm.base_url,
                extra={"storage": {"synchronous": args.synchronous}},
            ) as bot,
        ):
            llm.latency_s = 3600.0  # stalled: no turn ever gets an answer
            servers = {"bare": bare, "limit": limit, "talkbot": bot}
            if bot.wal is None or limit.wal is None:
                raise RuntimeError("talkbot's config has no SQLite store")
            async with contextlib.AsyncExitStack() as more:
                for kind in FLOORS if args.floors else ():
                    port, store = rig.free_port(), tmp / f"{kind}.sqlite3"
                    servers[kind] = await more.enter_async_context(
                        rig.spawn(
                            [
                                *serve,
                                *("--serve-limit", str(port), "--limit-store", str(store)),
                                *("--synchronous", args.synchronous, "--serve-as", kind),
                            ],
                            f"http://127.0.0.1:{port}",
                            tmp / f"{kind}.log",
                            "/readyz",
                            store=store,
                        )
                    )
                if args.before is not None:
                    (tmp / "before").mkdir()
                    servers["before"] = await more.enter_async_context(
                        rig.talkbot(
                            tmp / "before",
                            talk_url=talk.url,
                            llm_url=llm.base_url,
                            extra={"storage": {"synchronous": args.synchronous}},
                            tree=args.before,
                        )
                    )
                cpu_before = {name: rig.cpu_seconds(p.pid) for name, p in servers.items()}
                threads_before = rig.thread_cpu_seconds(bot.pid)
                async with rig.file_sizes([bot.wal, limit.wal]) as (bot_wal, limit_wal):
                    rounds, half_rate = await interleaved(servers, args)
                cpu = {
                    name: rig.cpu_seconds(p.pid) - cpu_before[name] for name, p in servers.items()
                }
                threads = rig.thread_cpu_seconds(bot.pid)
                loop_s = threads.get(bot.pid, 0.0) - threads_before.get(bot.pid, 0.0)
                memory = rig.memory_mib(bot.pid)
    report(rounds, half_rate, args)
    us = {name: rounds[name].cpu_us(cpu[name]) for name in rounds}
    print(
        "server CPU per webhook (warm-ups included): "
        + ", ".join(f"{name} {us[name]:.0f} µs" for name in rounds)
        + f" (limit/talkbot {us['limit'] / us['talkbot']:.2f}: the peak ratio on an idle core)"
    )
    loop_us = rounds["talkbot"].cpu_us(loop_s)
    print(
        f"talkbot's CPU per webhook by thread: event loop {loop_us:.0f} µs, the others (the"
        f" store's, the checkpointer, ...) {us['talkbot'] - loop_us:.0f} µs"
    )
    print(f"talkbot RSS {memory['VmRSS']:.0f} MiB, peak {memory['VmHWM']:.0f} MiB")
    print(
        f"WAL file, sampled every 100 ms ({bot_wal.samples} samples): talkbot"
        f" {bot_wal.summary()}; limit {limit_wal.summary()}"
    )


def report(rounds: dict[str, Rounds], half_rate: float, args: argparse.Namespace) -> None:
    sections: list[tuple[str, Callable[[Rounds], list[rig.Load]], str]] = [
        ("", lambda r: r.peaks, "peak"),
        (f"closed loop at {args.low_connections} connections:", lambda r: r.lows, "low"),
        (
            f"paced at {half_rate:,.0f}/s (half the limit's median peak):",
            lambda r: r.halves,
            "paced",
        ),
        (f"paced at {args.steady_rate:,.0f}/s (a busy Talk server):", lambda r: r.steady, "paced"),
    ]
    for title, loads, label in sections:
        if title:
            print(title)
        for name, runs in rounds.items():
            for i, load in enumerate(loads(runs), 1):
                print(f"{name:7} {label} #{i}: {load.summary()}")
    bare, limit, bot = (rounds[name] for name in SERVERS)
    ratio = bot.peak_rate() / limit.peak_rate()
    print(
        f"median peak: bare {bare.peak_rate():,.0f}/s, limit {limit.peak_rate():,.0f}/s,"
        f" talkbot {bot.peak_rate():,.0f}/s; talkbot/limit {ratio:.2f}"
        f" (goal >= {GOAL_PEAK_RATIO}) {_verdict(ratio >= GOAL_PEAK_RATIO)};"
        f" talkbot/bare {bot.peak_rate() / bare.peak_rate():.2f} (info)"
    )
    low_ratio = bot.low_p99_ms() / limit.low_p99_ms()
    print(
        f"median p99 at {args.low_connections} connections: bare {bare.low_p99_ms():.1f} ms,"
        f" limit {limit.low_p99_ms():.1f} ms, talkbot {bot.low_p99_ms():.1f} ms;"
        f" talkbot/limit {low_ratio:.2f} (goal <= {GOAL_LOW_P99_RATIO})"
        f" {_verdict(low_ratio <= GOAL_LOW_P99_RATIO)}"
    )
    print(
        f"median p99 at half the limit's peak: bare {bare.half_p99_ms():.1f} ms,"
        f" limit {limit.half_p99_ms():.1f} ms, talkbot {bot.half_p99_ms():.1f} ms"
    )
    print(
        f"median p99 at {args.steady_rate:,.0f}/s: bare {bare.steady_p99_ms():.1f} ms,"
        f" limit {limit.steady_p99_ms():.1f} ms, talkbot {bot.steady_p99_ms():.1f} ms"
    )
    if "recorded" in rounds:
        routed, recorded = rounds["routed"], rounds["recorded"]
        print(
            f"floors (info): routed (the limit plus each message's parse and routing)"
            f" {routed.peak_rate():,.0f}/s, routed/limit"
            f" {routed.peak_rate() / limit.peak_rate():.2f}; recorded (and its history row)"
            f" {recorded.peak_rate():,.0f}/s, recorded/limit"
            f" {recorded.peak_rate() / limit.peak_rate():.2f}; talkbot/recorded"
            f" {bot.peak_rate() / recorded.peak_rate():.2f}"
        )
    if "before" in rounds:
        before = rounds["before"]
        print(
            f"before ({args.before}): median peak {before.peak_rate():,.0f}/s, before/limit"
            f" {before.peak_rate() / limit.peak_rate():.2f}; p99 at {args.low_connections}"
            f" connections {before.low_p99_ms():.1f} ms, before/limit"
            f" {before.low_p99_ms() / limit.low_p99_ms():.2f}"
        )


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--low-connections", type=int, default=4, help="concurrent clients of the latency runs"
    )
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--addressed-every", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs per server, interleaved")
    parser.add_argument("--steady-rate", type=float, default=100.0, help="webhooks/s, paced")
    parser.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        default="full",
        help="[storage] synchronous of talkbot and the limit (full: a commit survives a"
        " power loss)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="TREE",
        help="also run talkbot from this checkout (e.g. a git worktree of an older commit),"
        " interleaved with the others: before and after in one run",
    )
    parser.add_argument(
        "--floors",
        action="store_true",
        help="also run the limit plus talkbot's parse and routing of each message (routed),"
        " and plus its history row as well (recorded), interleaved with the others",
    )
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-limit", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--limit-store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--serve-as", choices=["limit", *FLOORS], default="limit", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return
    if args.serve_limit:
        if args.limit_store is None:
            parser.error("--serve-limit needs --limit-store")
        serve_limit(args.serve_limit, args.limit_store, args.synchronous, args.serve_as)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
