"""Flood: one room floods at 200 messages/s with text the bot ignores while 20 other rooms
chat normally (#14). The same daemon first runs the normal rooms alone (the baseline),
then with the flood, for the same length of time each.

    .venv/bin/python -m bench.flood [--seconds 30] [--rooms 20] [--flood-rate 200]

Prints, for both phases, the normal rooms' time from posting a question to its answer
(p50, p99, max), the ratio of the p99s (goal <= 1.5), the flood's acknowledgement figures,
and the daemon's RSS at the start, after the baseline, during and after the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

from bench import rig
from tests.fakes.talk_server import FakeTalk

GOAL_RATIO = 1.5
FLOOD_ROOM = "floodroom1"


@dataclass
class Phase:
    """The normal rooms' questions of one phase: when each was posted, by message id."""

    posted: dict[int, float] = field(default_factory=dict)  # message id -> time.time()
    statuses: list[int] = field(default_factory=list)

    def latencies(self, talk: FakeTalk) -> list[float]:
        answered = {m.reply_to: m.at for m in talk.messages if m.reply_to in self.posted}
        return sorted(answered[i] - at for i, at in self.posted.items() if i in answered)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def normal_rooms(
    url: str, rooms: list[str], seconds: float, phase: Phase, every_s: float
) -> None:
    """Each room asks the bot one question every ``every_s``, staggered across rooms."""
    async with rig.session(len(rooms)) as http:

        async def room_loop(index: int, room: str) -> None:
            await asyncio.sleep(index * every_s / len(rooms))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                body = rig.chat_event("talkbot, what time is it?", room, sender=f"user{index}")
                message_id = int(json.loads(body)["object"]["id"])
                phase.posted[message_id] = time.time()
                body, headers = rig.signed(body)
                async with http.post(url, data=body, headers=headers) as resp:
                    phase.statuses.append(resp.status)
                await asyncio.sleep(every_s)

        await asyncio.gather(*(room_loop(i, room) for i, room in enumerate(rooms)))


def flood_request() -> rig.Request:
    return rig.signed(rig.chat_event("just chatting among ourselves", FLOOD_ROOM, sender="eve"))


async def run_phase(
    bot: rig.Process, args: argparse.Namespace, rooms: list[str], *, flood: bool
) -> tuple[Phase, rig.Load | None, float]:
    """One phase; returns it, the flood's load figures, and the RSS seen during it."""
    phase = Phase()
    normal = normal_rooms(bot.webhook_url, rooms, args.seconds, phase, args.every)
    if not flood:
        await normal
        return phase, None, rig.memory_mib(bot.pid)["VmRSS"]
    flooding = rig.paced(
        bot.webhook_url,
        flood_request,
        rate=args.flood_rate,
        seconds=args.seconds,
        connections=32,
    )
    sample = asyncio.ensure_future(_rss_midway(bot, args.seconds / 2))
    _, load = await asyncio.gather(normal, flooding)
    return phase, load, await sample


async def _rss_midway(bot: rig.Process, after_s: float) -> float:
    await asyncio.sleep(after_s)
    return rig.memory_mib(bot.pid)["VmRSS"]


def describe(name: str, latencies: list[float], asked: int) -> str:
    return (
        f"{name}: {len(latencies)}/{asked} answered, time to answer "
        f"p50 {1000 * percentile(latencies, 50):.0f} ms, "
        f"p99 {1000 * percentile(latencies, 99):.0f} ms, "
        f"max {1000 * (latencies[-1] if latencies else float('nan')):.0f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {rig.machine()}")
    rooms = [f"normalroom{i:02d}" for i in range(args.rooms)]
    with rig.workdir() as tmp:
        async with (
            FakeTalk(rig.SECRET) as talk,
            rig.ToolRoundModel(args.latency) as model,
            rig.talkbot(tmp, talk_url=talk.url, llm_url=model.url) as bot,
        ):
            rss_start = rig.memory_mib(bot.pid)["VmRSS"]
            baseline, _, rss_baseline = await run_phase(bot, args, rooms, flood=False)
            await rig.wait_drained(bot)
            flooded, load, rss_during = await run_phase(bot, args, rooms, flood=True)
            await rig.wait_drained(bot, timeout=300)
            rss_after = rig.memory_mib(bot.pid)["VmRSS"]
            base_lat, flood_lat = baseline.latencies(talk), flooded.latencies(talk)
            flood_answers = sum(1 for m in talk.messages if m.token == FLOOD_ROOM)
    print(
        f"{args.rooms} normal rooms, one question each every {args.every:g} s for "
        f"{args.seconds:g} s per phase; model {args.latency:g} s per call, one tool round"
    )
    print(describe("baseline (no flood)", base_lat, len(baseline.posted)))
    print(describe("with the flood     ", flood_lat, len(flooded.posted)))
    ratio = percentile(flood_lat, 99) / percentile(base_lat, 99)
    verdict = "OK" if ratio <= GOAL_RATIO else "MISSED"
    print(f"p99 with the flood / p99 without: {ratio:.2f} (goal <= {GOAL_RATIO}) {verdict}")
    if load is not None:
        print(f"flood room at {args.flood_rate:g}/s: {load.summary()}")
    print(f"answers posted into the flood room: {flood_answers} (its text is ignored)")
    print(
        f"RSS: start {rss_start:.0f} MiB, after the baseline {rss_baseline:.0f} MiB, "
        f"during the flood {rss_during:.0f} MiB, after it {rss_after:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between questions")
    parser.add_argument("--flood-rate", type=float, default=200.0, help="flood messages/s")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per model call")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
