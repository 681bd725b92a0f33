"""Ingest: signed webhooks/s and ack latency of `talkbot serve` against a bare aiohttp app.

    .venv/bin/python -m bench.ingest [--seconds 5] [--connections 32] [--synchronous full|normal]

Both servers are subprocesses on 127.0.0.1 and get the same load from the same client
(an aiohttp client in this process). The bare app only checks the signature and answers
200. talkbot gets a real config, a fake Talk and a model that never answers (stalled),
so every turn it starts waits forever: what is measured is verify, parse, store, route.
Traffic: group rooms in "mention" mode; every Nth message names the bot (a turn that
stalls, after which that room's queue fills and overflows, as it would in production).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web

from bench import rig
from bot.talk.signature import RANDOM_HEADER, SIGNATURE_HEADER, verify_webhook
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk

GOAL_RATIO = 0.6
GOAL_P99_MS = 20.0


# -- the baseline: a bare aiohttp app that checks the signature ----------------------------


async def _baseline_webhook(request: web.Request) -> web.Response:
    body = await request.read()
    random = request.headers.get(RANDOM_HEADER)
    ok = verify_webhook(rig.SECRET, random, body, request.headers.get(SIGNATURE_HEADER))
    return web.Response(status=200 if ok else 401)


async def _baseline_ready(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def serve_baseline(port: int) -> None:
    app = web.Application()
    app.router.add_post("/webhook", _baseline_webhook)
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


async def at_rate(url: str, args: argparse.Namespace, rate: float) -> rig.Load:
    requests = prepared(args.rooms, args.addressed_every, int(rate * args.seconds) + 10)
    return await rig.paced(
        url, requests, rate=rate, seconds=args.seconds, connections=args.connections * 4
    )


@dataclass
class Rounds:
    """Every run of one server, in the order they ran (interleaved with the other server)."""

    peaks: list[rig.Load] = field(default_factory=list)
    halves: list[rig.Load] = field(default_factory=list)
    steady: list[rig.Load] = field(default_factory=list)  # at a fixed, modest rate

    def peak_rate(self) -> float:
        return statistics.median(load.rate for load in self.peaks)

    def half_p99_ms(self) -> float:
        return statistics.median(load.percentile_ms(99) for load in self.halves)

    def cpu_us(self, cpu_s: float) -> float:
        """CPU per webhook; the warm-up runs (one second each) count as if measured."""
        measured = sum(load.count for load in (*self.peaks, *self.halves, *self.steady))
        warm = sum(load.rate for load in self.peaks)  # about one second at the peak rate
        return 1e6 * cpu_s / (measured + warm)


async def interleaved(
    base: rig.Process, bot: rig.Process, args: argparse.Namespace
) -> tuple[Rounds, Rounds, float]:
    """Baseline and talkbot take turns, so a noisy neighbour hurts both alike."""
    base_rounds, bot_rounds = Rounds(), Rounds()
    for _ in range(args.repeat):
        base_rounds.peaks.append(await peak(base.webhook_url, args))
        bot_rounds.peaks.append(await peak(bot.webhook_url, args))
    half_rate = base_rounds.peak_rate() / 2
    for _ in range(args.repeat):
        base_rounds.halves.append(await at_rate(base.webhook_url, args, half_rate))
        bot_rounds.halves.append(await at_rate(bot.webhook_url, args, half_rate))
    for _ in range(args.repeat):
        base_rounds.steady.append(await at_rate(base.webhook_url, args, args.steady_rate))
        bot_rounds.steady.append(await at_rate(bot.webhook_url, args, args.steady_rate))
    return base_rounds, bot_rounds, half_rate


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {rig.machine()}")
    print(
        f"load: {args.connections} connections, {args.seconds:g} s per run, {args.repeat} runs "
        f"each, {args.rooms} rooms, every {args.addressed_every}th message names the bot"
    )
    port = rig.free_port()
    argv = [sys.executable, "-m", "bench.ingest", "--serve-baseline", str(port)]
    url = f"http://127.0.0.1:{port}"
    with rig.workdir() as tmp:
        async with (
            rig.spawn(argv, url, tmp / "baseline.log", "/readyz") as base,
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
            cpu_before = {p.pid: rig.cpu_seconds(p.pid) for p in (base, bot)}
            base_rounds, bot_rounds, half_rate = await interleaved(base, bot, args)
            cpu = {pid: rig.cpu_seconds(pid) - before for pid, before in cpu_before.items()}
            memory = rig.memory_mib(bot.pid)
    report(base_rounds, bot_rounds, half_rate, args.steady_rate)
    base_us, bot_us = base_rounds.cpu_us(cpu[base.pid]), bot_rounds.cpu_us(cpu[bot.pid])
    print(
        f"server CPU per webhook (warm-ups included): baseline {base_us:.0f} µs, talkbot "
        f"{bot_us:.0f} µs ({base_us / bot_us:.2f}: the throughput ratio on an idle core)"
    )
    print(f"talkbot RSS {memory['VmRSS']:.0f} MiB, peak {memory['VmHWM']:.0f} MiB")


def report(base: Rounds, bot: Rounds, half_rate: float, steady_rate: float) -> None:
    for name, rounds in (("baseline", base), ("talkbot", bot)):
        for i, load in enumerate(rounds.peaks, 1):
            print(f"{name:8} peak #{i}: {load.summary()}")
    print(f"paced at {half_rate:,.0f}/s (half the baseline's median peak):")
    for name, rounds in (("baseline", base), ("talkbot", bot)):
        for i, load in enumerate(rounds.halves, 1):
            print(f"{name:8} paced #{i}: {load.summary()}")
    print(f"paced at {steady_rate:,.0f}/s (a busy Talk server):")
    for name, rounds in (("baseline", base), ("talkbot", bot)):
        for i, load in enumerate(rounds.steady, 1):
            print(f"{name:8} paced #{i}: {load.summary()}")
    ratio = bot.peak_rate() / base.peak_rate()
    p99 = bot.half_p99_ms()
    print(
        f"median peak: baseline {base.peak_rate():,.0f}/s, talkbot {bot.peak_rate():,.0f}/s; "
        f"ratio {ratio:.2f} (goal >= {GOAL_RATIO}) {'OK' if ratio >= GOAL_RATIO else 'MISSED'}"
    )
    print(
        f"median p99 at half the baseline's peak: baseline {base.half_p99_ms():.1f} ms, "
        f"talkbot {p99:.1f} ms (goal < {GOAL_P99_MS:g} ms) "
        f"{'OK' if p99 < GOAL_P99_MS else 'MISSED'}"
    )
    steady = statistics.median(load.percentile_ms(99) for load in bot.steady)
    print(f"median p99 at {steady_rate:,.0f}/s: talkbot {steady:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--addressed-every", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs per server, interleaved")
    parser.add_argument("--steady-rate", type=float, default=100.0, help="webhooks/s, paced")
    parser.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        default="full",
        help="talkbot's [storage] synchronous (full: a commit survives a power loss)",
    )
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
