"""Intake, in process: where a webhook's CPU goes once HTTP is left out.

    .venv/bin/python -m bench.intake [--webhooks 30000] [--addressed-every 20]

bench.ingest measures whole servers over HTTP; this one takes HTTP away, to account for
the difference between talkbot and the durable limit (bench/ingest.py) that HTTP does not
explain. Three readings, each against its counterpart in the limit:

- the handler path: the same signed webhooks (the ingest traffic, built beforehand) given
  to talkbot's ``WebhookReceiver.handle`` (the whole daemon built in process: store,
  router, dispatcher; model stalled) and to ``DurableLimit.webhook``, 32 at a time as 32
  connections would, through a stand-in for aiohttp's request with what both read. CPU
  per webhook of the event loop's thread and of the others (the store's, ...), from
  /proc, as in bench.ingest;
- the pieces of the loop's share, each timed alone on the same messages (best of 3);
- the store thread's share: the inbox INSERT alone (the limit's), with the history row of
  a settled message beside it, and the same through talkbot's engine, in batches of 32
  on one thread, with ``synchronous = "full"``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from bench import rig
from bench.ingest import DurableLimit, insert_params, prepared
from bot.clock import SystemClock
from bot.store.engine import Tx, _run_batch
from bot.store.history import INSERT_HISTORY, history_row
from bot.store.inbox import INSERT_EVENT, _insert
from bot.store.records import HistoryEntry
from bot.store.sqlite import SqliteDriver
from bot.talk.events import parse_event
from bot.talk.signature import RANDOM_HEADER, SIGNATURE_HEADER, verify_webhook
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import running_daemon

IN_FLIGHT = 32
BATCH = 32
Handler = Callable[[Any], Awaitable[web.StreamResponse]]


class _Content:
    """The request body stream, all of it arrived with the headers."""

    def is_eof(self) -> bool:
        return True


class _Request:
    """What the webhook handlers read of aiohttp's request, and nothing more."""

    remote = "127.0.0.1"
    content = _Content()

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self._body = body
        self.headers = headers
        self.content_length = len(body)

    async def read(self) -> bytes:
        return self._body


def _thread_cpu_s() -> dict[int, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        out[int(task)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


async def _drive(handle: Handler, requests: list[rig.Request]) -> None:
    """``IN_FLIGHT`` closed loops, as many connections would; every answer must be 200."""
    pending = iter(requests)

    async def connection() -> None:
        for body, headers in pending:
            response = await handle(_Request(body, headers))
            if response.status != 200:
                raise RuntimeError(f"webhook answered {response.status}")

    await asyncio.gather(*(connection() for _ in range(IN_FLIGHT)))


async def _per_webhook(handle: Handler, traffic: Callable[[], rig.Request], count: int) -> str:
    await _drive(handle, [traffic() for _ in range(2000)])  # warm-up
    requests = [traffic() for _ in range(count)]
    loop_thread = threading.get_native_id()
    before, started = _thread_cpu_s(), time.perf_counter()
    await _drive(handle, requests)
    wall, after = time.perf_counter() - started, _thread_cpu_s()
    used = {t: (after[t] - before.get(t, 0.0)) * 1e6 / count for t in after}
    loop_us = used.pop(loop_thread, 0.0)
    return (
        f"event loop {loop_us:.0f} µs, other threads {sum(used.values()):.0f} µs"
        f" ({count / wall:,.0f} webhooks/s on the wall clock)"
    )


async def handler_paths(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        limit = DurableLimit(Path(tmp) / "limit.sqlite3", "full")
        traffic = prepared(args.rooms, args.addressed_every, 0)
        print("limit  ", await _per_webhook(limit.webhook, traffic, args.webhooks))
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            FakeTalk(rig.SECRET) as talk,
            FakeLLM() as llm,
            running_daemon(
                Path(tmp),
                talk,
                llm,
                clock=SystemClock(),
                extra={"nextcloud": {"bot_secret": rig.SECRET}},
            ) as daemon,
        ):
            llm.latency_s = 3600.0  # stalled, as in bench.ingest
            handle = daemon.runtime.running.webhook.handle
            traffic = prepared(args.rooms, args.addressed_every, 0)
            print("talkbot", await _per_webhook(handle, traffic, args.webhooks))
            await pieces(daemon.runtime.running.router, traffic)


def _best_us(work: Callable[[Any], object], items: list[Any]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for item in items:
            work(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best * 1e6


async def pieces(router: Any, traffic: Callable[[], rig.Request]) -> None:
    """The loop's share, piece by piece, on messages of rooms the router already knows."""
    requests = [traffic() for _ in range(5000)]
    bodies = [body for body, _ in requests]
    events = [parse_event(body) for body in bodies]

    def verify(request: rig.Request) -> bool:
        body, headers = request
        return verify_webhook(rig.SECRET, headers[RANDOM_HEADER], body, headers[SIGNATURE_HEADER])

    parse_us, loads_us = _best_us(parse_event, bodies), _best_us(json.loads, bodies)
    verify_us, settle_us = _best_us(verify, requests), _best_us(router.settle_now, events)
    print(
        f"pieces: json.loads {loads_us:.1f} µs (the limit's parse), parse_event {parse_us:.1f}"
        f" µs, signature {verify_us:.1f} µs (both), Router.settle_now {settle_us:.1f} µs"
    )


def _rows(count: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    traffic = prepared(100, 20, 0)
    now = time.time()
    inserts = [
        insert_params(body, headers[RANDOM_HEADER], now)
        for body, headers in (traffic() for _ in range(count))
    ]
    entry = HistoryEntry(
        role="user", content="chatter 1234", actor_id="users/alice", actor_name="Alice"
    )
    history = [history_row(str(row[0]), entry, now) for row in inserts]
    return inserts, history


def _batches(count: int) -> Iterable[range]:
    return (range(i, min(i + BATCH, count)) for i in range(0, count, BATCH))


def store_thread(count: int) -> None:
    inserts, history = _rows(count)
    for label, with_history, engine in (
        ("inbox INSERT (the limit)", False, False),
        ("inbox INSERT + history row", True, False),
        ("the same through talkbot's engine", True, True),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "talkbot.sqlite3"
            driver, _ = SqliteDriver.open(path, SystemClock(), synchronous="full")
            if engine:
                started = time.thread_time()
                for batch in _batches(count):
                    _run_batch(driver, [_settled_work(inserts[i], history[i]) for i in batch])
                used = time.thread_time() - started
                driver.close()
            else:
                driver.close()
                used = _plain(path, inserts, history if with_history else None)
        print(f"store thread: {label}: {used * 1e6 / count:.1f} µs per webhook")


def _settled_work(params: tuple[Any, ...], row: tuple[Any, ...]) -> Callable[[Tx], int | None]:
    def insert(tx: Tx) -> int | None:  # as Inbox.accept_settled's
        event_id = _insert(params, tx)
        if event_id is not None:
            tx.execute(INSERT_HISTORY, row)
        return event_id

    return insert


def _plain(
    path: Path, inserts: list[tuple[Any, ...]], history: list[tuple[Any, ...]] | None
) -> float:
    """As DurableLimit's writer: BEGIN IMMEDIATE, one INSERT each, COMMIT."""
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    started = time.thread_time()
    for batch in _batches(len(inserts)):
        db.execute("BEGIN IMMEDIATE")
        for i in batch:
            db.execute(INSERT_EVENT, inserts[i]).fetchall()
            if history is not None:
                db.execute(INSERT_HISTORY, history[i])
        db.execute("COMMIT")
    used = time.thread_time() - started
    db.close()
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=30_000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--addressed-every", type=int, default=20)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"machine: {rig.machine()}")
    print(
        f"{args.webhooks:,} webhooks, {IN_FLIGHT} in flight, {args.rooms} rooms, every"
        f" {args.addressed_every}th names the bot; CPU per webhook:"
    )
    asyncio.run(handler_paths(args))
    store_thread(20_000)


if __name__ == "__main__":
    main()
