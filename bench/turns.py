"""Turns: 200 rooms send one message each at once; the model takes 1 s per call and
every turn is one tool round (current_time, then the answer): two calls, ideal 2 s.

    .venv/bin/python -m bench.turns [--rooms 200] [--latency 1.0]

Prints the time until all answers are posted against the ideal, and the daemon's own CPU
time per turn (the model runs in this process, so its time is not in the figure).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from bench import rig
from bot.handlers.chat import TURNS_BEFORE_LEARNING
from tests.fakes.talk_server import FakeTalk

GOAL_RATIO = 1.25
GOAL_CPU_MS_PER_TURN = 2.0  # #19
WARM_UP_TURNS = TURNS_BEFORE_LEARNING


async def post_all(url: str, rooms: list[str]) -> list[int]:
    # Every room follows the mention rule (#12.3): each message names the bot.
    text = "talkbot, what time is it?"
    requests = [rig.signed(rig.chat_event(text, r, one_to_one=True)) for r in rooms]
    async with rig.session(len(rooms)) as http:

        async def one(request: rig.Request) -> int:
            body, headers = request
            async with http.post(url, data=body, headers=headers) as resp:
                return resp.status

        return await asyncio.gather(*(one(r) for r in requests))


@dataclass
class Result:
    statuses: list[int]
    acked_s: float
    elapsed_s: float
    cpu_s: float
    timeline: str


async def warm_up(bot: rig.Process, talk: FakeTalk, model: rig.ToolRoundModel) -> None:
    """A few turns first: a long-running daemon has its model client set up already and
    knows the model's usual pace (the 👀 shows only on turns slower than usual)."""
    rooms = [f"warmup{i:02d}" for i in range(WARM_UP_TURNS)]
    await post_all(bot.webhook_url, rooms)
    await talk.wait_for_messages(len(rooms), timeout=60)
    await rig.wait_drained(bot)
    talk.messages.clear()
    talk.requests.clear()
    model.arrivals.clear()
    model.requests = model.max_in_flight = 0


async def measure(
    bot: rig.Process, talk: FakeTalk, model: rig.ToolRoundModel, rooms: list[str]
) -> Result:
    cpu_before = rig.cpu_seconds(bot.pid)
    started = time.perf_counter()
    wall_offset = time.time() - started  # FakeTalk stamps messages with time.time()
    statuses = await post_all(bot.webhook_url, rooms)
    acked = time.perf_counter() - started
    answers = await talk.wait_for_messages(len(rooms), timeout=120)
    elapsed = time.perf_counter() - started
    await rig.wait_drained(bot)
    cpu = rig.cpu_seconds(bot.pid) - cpu_before
    assert {m.token for m in answers} == set(rooms), "a room got no answer"
    posted = [m.at - wall_offset for m in answers]
    return Result(statuses, acked, elapsed, cpu, timeline(started, model.arrivals, posted))


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {rig.machine()}")
    rooms = [f"turnroom{i:04d}" for i in range(args.rooms)]
    extra = {"llm": {"concurrency": min(256, args.rooms)}}
    with rig.workdir() as tmp:
        async with (
            FakeTalk(rig.SECRET) as talk,
            rig.ToolRoundModel(args.latency) as model,
            rig.talkbot(
                tmp, talk_url=talk.url, llm_url=model.url, extra=extra, tree=args.tree
            ) as bot,
        ):
            await warm_up(bot, talk, model)
            result = await measure(bot, talk, model, rooms)
    ideal = 2 * args.latency
    ratio = result.elapsed_s / ideal
    print(f"{args.rooms} rooms, model latency {args.latency:g} s, 2 model calls per turn")
    print(
        f"all {len(result.statuses)} webhooks acknowledged in {result.acked_s:.2f} s, "
        f"statuses {set(result.statuses)}"
    )
    print(
        f"all answers posted after {result.elapsed_s:.2f} s (ideal {ideal:g} s): "
        f"{ratio:.2f}x ideal (goal <= {GOAL_RATIO}x) {'OK' if ratio <= GOAL_RATIO else 'MISSED'}"
    )
    print(f"model requests {model.requests}, at most {model.max_in_flight} at once")
    print(result.timeline)
    print(
        f"Talk API calls: {len(talk.requests)} (answers, plus the 👀 added and taken back on "
        "turns slower than usual)"
    )
    per_turn_ms = 1000 * result.cpu_s / args.rooms
    print(
        f"daemon CPU: {result.cpu_s:.2f} s in total, {per_turn_ms:.1f} ms per turn (model time"
        f" excluded: the model is another process; goal <= {GOAL_CPU_MS_PER_TURN:g} ms)"
        f" {'OK' if per_turn_ms <= GOAL_CPU_MS_PER_TURN else 'MISSED'}"
    )


def timeline(started: float, arrivals: list[tuple[float, bool]], posted: list[float]) -> str:
    """When the first and second model calls arrived, and when answers were posted."""

    def spread(times: list[float]) -> str:
        if not times:
            return "none"
        ordered = sorted(t - started for t in times)
        return f"{ordered[0]:.2f}-{ordered[-1]:.2f} s (median {ordered[len(ordered) // 2]:.2f})"

    first = [t for t, with_result in arrivals if not with_result]
    second = [t for t, with_result in arrivals if with_result]
    return (
        f"timeline from the first post: 1st model call {spread(first)}, "
        f"2nd model call {spread(second)}, answer posted {spread(posted)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree",
        type=Path,
        default=rig.ROOT,
        help="run talkbot from this checkout (e.g. a git worktree of an older commit)",
    )
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
