"""The webhook under load and under attack: a stalled model (W14), slowloris clients (W09).

Timings are bounded generously; the figures for this machine are in bench/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from pathlib import Path

import aiohttp
import pytest

from bot import replies
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import Daemon, create_event, php_json, running_daemon, signed_headers

pytestmark = pytest.mark.timing  # races a wall-clock deadline: run alone (scripts/check)

GENEROUS_ACK_S = 2.5
# Longer than any ack may take: an ack that waited for the model would fail the bound.
MODEL_TIMEOUT_S = 3.0
TURNS = 200


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


async def timed_post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=signed_headers(body)) as resp:
        return resp.status, time.perf_counter() - started


async def test_w14_stalled_model_200_webhooks_at_once_all_acknowledged(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    extra = {"llm": {"concurrency": 256, "timeout_s": MODEL_TIMEOUT_S}}
    for _ in range(TURNS):
        llm.hang(60)  # every model call stalls; the daemon's timeout ends each turn
    rooms = [f"stalled{i:03d}" for i in range(TURNS)]
    bodies = [
        php_json(create_event("talkbot, are you there?", room=room, room_name='["alice","bob"]'))
        for room in rooms
    ]
    async with running_daemon(tmp_path, talk, llm, extra) as daemon:
        url = f"{daemon.url}{daemon.settings.server.webhook_path}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            results = await asyncio.gather(*(timed_post(session, url, b) for b in bodies))
        acks = [seconds for _status, seconds in results]
        assert [status for status, _ in results] == [200] * TURNS
        assert max(acks) < GENEROUS_ACK_S, f"p99 {p99(acks):.3f}s max {max(acks):.3f}s"
        # Nothing acknowledged is lost: every turn ends with the timeout notice.
        await talk.wait_for_messages(TURNS, timeout=MODEL_TIMEOUT_S + 10)
        await daemon.idle()
    assert sorted(m.token for m in talk.messages) == rooms
    assert set(talk.texts()) == {replies.llm_notice("timeout")}


# -- W09: slowloris --------------------------------------------------------------------

DRIPPERS = 50
DRIP_INTERVAL_S = 0.05
DRIP_FOR_S = 1.5
BODY_TIMEOUT_S = 0.5


async def drip(
    port: int, sent_at_once: bytes, dripped: bytes, until: float, connected: asyncio.Event
) -> float | None:
    """Send a prefix, then drip one byte per interval until ``until``.

    Returns when the server hung up (seconds after the drip started), None if it never did.
    Waiting for the server's answer is the pacing: a read that times out is one tick.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent_at_once)
    connected.set()
    opened = time.perf_counter()
    try:
        for byte in dripped:
            if time.perf_counter() >= until:
                return None
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                if not await asyncio.wait_for(_drain_reply(reader), DRIP_INTERVAL_S):
                    return time.perf_counter() - opened
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _drain_reply(reader: asyncio.StreamReader) -> bool:
    """Read whatever the server sends; False once it closed the connection."""
    while await reader.read(4096):
        pass
    return False


def request_head(daemon: Daemon, body: bytes, *, complete: bool) -> bytes:
    lines = [
        f"POST {daemon.settings.server.webhook_path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{name}: {value}" for name, value in signed_headers(body).items()),
        f"Content-Length: {len(body)}",
    ]
    if not complete:  # a header that never ends: the request is never read
        return ("\r\n".join(lines) + "\r\nX-Padding: " + "a" * 10_000).encode()
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_w09_drip_clients_do_not_block_webhooks_and_slow_bodies_are_cut_off(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    extra = {"server": {"body_timeout_s": BODY_TIMEOUT_S}}
    async with running_daemon(tmp_path, talk, llm, extra) as daemon:
        port = int(daemon.url.rsplit(":", 1)[1])
        body = json.dumps(create_event("slow")).encode() + b" " * 500
        until = time.perf_counter() + DRIP_FOR_S
        headers_drip = request_head(daemon, body, complete=False)
        body_head = request_head(daemon, body, complete=True)
        connected = [asyncio.Event() for _ in range(DRIPPERS)]
        drips = [
            asyncio.ensure_future(
                drip(port, body_head, body, until, connected[i])
                if i % 2
                else drip(port, b"", headers_drip, until, connected[i])
            )
            for i in range(DRIPPERS)
        ]
        await asyncio.gather(*(event.wait() for event in connected))
        llm.reply("still here")
        started = time.perf_counter()
        texts = await daemon.say(create_event("talkbot, are you alive?"))
        assert time.perf_counter() - started < GENEROUS_ACK_S
        assert texts == ["still here"]
        closed_after = await asyncio.gather(*drips)
    # A body that does not arrive within the timeout is cut off, connection and all
    # (the even-numbered drips send headers only: aiohttp has no header timeout and keeps
    # them open until the client gives up; deploy/ puts a proxy with timeouts in front).
    body_drips = closed_after[1::2]
    assert all(t is not None and t < BODY_TIMEOUT_S + 1.0 for t in body_drips), body_drips
