"""Memory: RSS of `talkbot serve` idle and after 1000 rooms with a full history each.

    .venv/bin/python -m bench.memory [--rooms 1000] [--history 30]

Every room gets ``history - 1`` messages of chatter (group room, "mention" mode: stored as
history, no turn) and then one message naming the bot, a turn that reads the whole history
and sends it to the model. RSS comes from /proc/<pid>/status (VmRSS now, VmHWM peak); the
baseline is the bare aiohttp app of bench/ingest.py, the floor of Python plus aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import rig
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk

GOAL_IDLE_MIB = 80.0  # #19
GOAL_LOADED_MIB = 120.0  # #19


def room_traffic(rooms: int, history: int) -> Callable[[], rig.Request]:
    """Message k of every room, then message k+1: a room's turn comes after its chatter."""
    names = [f"memroom{i:05d}" for i in range(rooms)]
    requests = []
    for k in range(history):
        for room in names:
            last = k == history - 1
            text = f"talkbot, sum up message {k}" if last else f"chatter {k} in {room} " + "x" * 80
            requests.append(rig.signed(rig.chat_event(text, room)))
    requests.reverse()
    return requests.pop


async def baseline_idle(tmp: Path) -> float:
    port = rig.free_port()
    argv = [sys.executable, "-m", "bench.ingest", "--serve-baseline", str(port)]
    url = f"http://127.0.0.1:{port}"
    async with rig.spawn(argv, url, tmp / "baseline.log", "/readyz") as base:
        return rig.memory_mib(base.pid)["VmRSS"]


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {rig.machine()}")
    total = args.rooms * args.history
    extra = {"chat": {"history_messages": args.history}, "llm": {"concurrency": 16}}
    with rig.workdir() as tmp:
        base = await baseline_idle(tmp)
        async with (
            FakeTalk(rig.SECRET) as talk,
            FakeLLM() as llm,
            rig.talkbot(
                tmp, talk_url=talk.url, llm_url=llm.base_url, extra=extra, tree=args.tree
            ) as bot,
        ):
            idle = rig.memory_mib(bot.pid)["VmRSS"]
            started = time.perf_counter()
            load = await rig.closed_loop(
                bot.webhook_url,
                room_traffic(args.rooms, args.history),
                connections=args.connections,
                seconds=3600,
                count=total,
            )
            await talk.wait_for_messages(args.rooms, timeout=600)
            await rig.wait_drained(bot, timeout=600)
            elapsed = time.perf_counter() - started
            loaded = rig.memory_mib(bot.pid)
            sent = len(llm.requests[-1].messages) if llm.requests else 0
    print(f"bare aiohttp app, idle:     {base:.0f} MiB")
    print(
        f"talkbot idle (just started): {idle:.0f} MiB (goal < {GOAL_IDLE_MIB:g}) "
        f"{'OK' if idle < GOAL_IDLE_MIB else 'MISSED'}; {idle / base:.1f}x the bare app"
    )
    print(
        f"loaded: {args.rooms} rooms x {args.history} messages = {total} webhooks "
        f"({load.rate:,.0f}/s, statuses {load.statuses}), {args.rooms} turns, "
        f"{elapsed:.0f} s in all; the last turn sent {sent} messages to the model"
    )
    print(
        f"talkbot loaded: RSS {loaded['VmRSS']:.0f} MiB, peak {loaded['VmHWM']:.0f} MiB "
        f"(goal < {GOAL_LOADED_MIB:g}) {'OK' if loaded['VmHWM'] < GOAL_LOADED_MIB else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree",
        type=Path,
        default=rig.ROOT,
        help="run talkbot from this checkout (e.g. a git worktree of an older commit)",
    )
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--history", type=int, default=30)
    parser.add_argument("--connections", type=int, default=16)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
