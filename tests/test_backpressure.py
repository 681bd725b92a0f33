"""One room flooded with 1000 messages (R07): the webhook keeps acknowledging, other rooms
are answered, the flooded room's queue stays capped and gets one "busy" notice per window.

Timings are measured but only bounded generously here; figures belong in bench/.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from bot import replies
from bot.clock import ManualClock
from bot.dispatch import BUSY_NOTICE_INTERVAL_S
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import Daemon, create_event, running_daemon

pytestmark = pytest.mark.timing  # races a wall-clock deadline: run alone (scripts/check)

FLOOD_ROOM = "floodroom1"
QUIET_ROOM = "quietroom1"
MODEL_LATENCY_S = 0.02
GENEROUS_ACK_S = 2.0
GENEROUS_ANSWER_S = 5.0
SENDERS = 50  # webhooks in flight at once, as from a busy Talk server


class Flood:
    """Posts webhooks with bounded concurrency and records how long each ack took."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.acks: list[float] = []
        self.statuses: list[int] = []
        self._slots = asyncio.Semaphore(SENDERS)

    async def post(self, text: str, room: str, message_id: int) -> float:
        """Post one message; the wall-clock time it was acknowledged."""
        event = create_event(text, room=room, message_id=message_id)
        async with self._slots:
            started = time.perf_counter()
            status = await self.daemon.post(event)
            self.acks.append(time.perf_counter() - started)
        self.statuses.append(status)
        return time.time()

    def p99(self) -> float:
        ordered = sorted(self.acks)
        return ordered[math.ceil(0.99 * len(ordered)) - 1]


async def inbox_rows(daemon: Daemon, room: str) -> dict[str, int]:
    """How many of the room's inbox rows ended in each status."""
    store = daemon.runtime.running.store
    counts: dict[str, int] = {}
    row_id = 1
    while (status := await store.event_status(row_id)) is not None:
        item = await store.get_event(row_id)
        if item is not None and item.room == room:
            counts[status] = counts.get(status, 0) + 1
        row_id += 1
    return counts


async def flood_with_quiet_room(
    flood: Flood, first_id: int, count: int
) -> tuple[float, dict[int, float]]:
    """``count`` messages into the flood room and one into the quiet room per 200.

    Returns how long the flood took and, per quiet message id, when it was acknowledged.
    """
    quiet: dict[int, asyncio.Task[float]] = {}
    flooding = []
    started = time.perf_counter()
    for i in range(count):
        flooding.append(asyncio.ensure_future(flood.post(f"flood {i}", FLOOD_ROOM, first_id + i)))
        if i % 200 == 100:
            quiet_id = first_id + 100_000 + i
            quiet[quiet_id] = asyncio.ensure_future(flood.post(f"quiet {i}", QUIET_ROOM, quiet_id))
    await asyncio.gather(*flooding)
    seconds = time.perf_counter() - started
    return seconds, {message_id: await task for message_id, task in quiet.items()}


async def test_r07_one_room_flooded_with_1000_messages(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    clock = ManualClock()
    extra = {"chat": {"respond_in_groups": "all"}}
    async with running_daemon(tmp_path, talk, llm, extra, clock=clock) as daemon:
        llm.echo = True
        llm.latency_s = MODEL_LATENCY_S
        dispatcher = daemon.runtime.running.dispatcher
        flood = Flood(daemon)

        started = time.perf_counter()
        _flood_s, quiet_acked = await flood_with_quiet_room(flood, 10_000, 1000)
        await daemon.idle()
        seconds = time.perf_counter() - started  # until the last turn ended

        # The webhook answered every one of them, and quickly.
        assert set(flood.statuses) == {200}
        assert max(flood.acks) < GENEROUS_ACK_S, (
            f"p99 {flood.p99():.3f}s max {max(flood.acks):.3f}s"
        )

        # The other room was answered, every message once, without waiting for the flood.
        quiet_answers = [m for m in talk.messages if m.token == QUIET_ROOM]
        assert sorted(m.reply_to or 0 for m in quiet_answers) == sorted(quiet_acked)
        for answer in quiet_answers:
            assert answer.at - quiet_acked[answer.reply_to or 0] < GENEROUS_ANSWER_S

        # The flooded room: a capped queue, one busy notice, the rest answered in order.
        cap = dispatcher.room_queue_cap
        assert dispatcher.peak_room_queue <= cap
        texts = talk.texts(FLOOD_ROOM)
        assert texts.count(replies.busy()) == 1
        answered = [t for t in texts if t != replies.busy()]
        rows = await inbox_rows(daemon, FLOOD_ROOM)
        assert rows.get("done", 0) == len(answered)
        assert rows.get("done", 0) + rows.get("dropped", 0) == 1000
        # The room's turns ran one at a time, each at least the model's latency: no more
        # fit into the whole run (how many fit into the flood itself depends on how fast
        # this machine triages, so it is not a bound to assert). The rest were shed.
        assert len(answered) <= seconds / MODEL_LATENCY_S + 1
        assert rows.get("dropped", 0) > 0
        numbers = [int(t.rsplit(" ", 1)[-1]) for t in answered]
        assert numbers == sorted(numbers), "the flooded room's answers are out of order"

        # One notice per window: a new window after the interval, a new notice if it overflows.
        clock.advance(BUSY_NOTICE_INTERVAL_S + 1)
        await flood_with_quiet_room(flood, 20_000, 150)
        await daemon.idle()
        overflowed = (await inbox_rows(daemon, FLOOD_ROOM)).get("dropped", 0) > rows.get(
            "dropped", 0
        )
        assert talk.texts(FLOOD_ROOM).count(replies.busy()) == 1 + overflowed
        assert dispatcher.peak_room_queue <= cap
