"""File descriptors and slow clients against the real `talkbot serve` process (H05)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from bot.serving import default_max_connections
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import base_config, dm_event, free_port, php_json, signed_headers
from tests.test_process import Process, serve, write_toml

FD_LIMIT = 256  # soft and hard: the daemon cannot raise it
SLOW_CLIENTS = 400  # well over FD_LIMIT: without a cap they take every descriptor
CONNECT_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 20.0
PARTIAL_REQUEST = b"POST /webhook HT"  # a request line that never ends


def config_file(tmp_path: Path, talk: FakeTalk, llm: FakeLLM, **server: Any) -> Path:
    data = base_config(tmp_path, talk, llm, port=free_port())
    data["server"].update(server)
    data["llm"]["timeout_s"] = 30
    path = tmp_path / "talkbot.toml"
    write_toml(path, data)
    return path


async def open_slow(url: str) -> asyncio.StreamWriter | None:
    """One client that sends part of a request line and then nothing; None if it could
    not even connect (the listener's queue full)."""
    parts = urlsplit(url)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except (TimeoutError, OSError):
        return None
    writer.write(PARTIAL_REQUEST)
    return writer


@asynccontextmanager
async def slow_clients(url: str, count: int) -> AsyncIterator[list[asyncio.StreamWriter]]:
    opened = await asyncio.gather(*(open_slow(url) for _ in range(count)))
    writers = [w for w in opened if w is not None]
    try:
        yield writers
    finally:
        for writer in writers:
            writer.close()


async def post_within(daemon: Process, body: bytes, limit_s: float = ANSWER_TIMEOUT_S) -> int:
    async with asyncio.timeout(limit_s):
        return await daemon.post(body)


async def test_h05_slow_clients_at_a_low_descriptor_limit_never_starve_accepted_work(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """400 slow-header clients against a daemon limited to 256 descriptors: a webhook
    posted meanwhile is answered (model and Talk calls need descriptors), nothing fails
    with EMFILE, and once the slow clients leave the next one is answered too."""
    config = config_file(tmp_path, talk, llm)
    log = tmp_path / "talkbot.log"
    llm.reply("answered during the flood")
    llm.reply("answered after the flood")
    first = php_json(dm_event("talkbot, are you there?", message_id=701))
    second = php_json(dm_event("talkbot, still there?", message_id=702))
    async with serve(config, log=log, fd_limit=FD_LIMIT) as daemon:
        async with slow_clients(daemon.url, SLOW_CLIENTS) as clients:
            assert len(clients) > FD_LIMIT  # the kernel queue took the ones not accepted
            assert await post_within(daemon, first) == 200
            await talk.wait_for_messages(1, timeout=ANSWER_TIMEOUT_S)
        assert await post_within(daemon, second) == 200
        await talk.wait_for_messages(2, timeout=ANSWER_TIMEOUT_S)
    assert talk.texts() == ["answered during the flood", "answered after the flood"]
    text = log.read_text()
    assert "Too many open files" not in text
    assert "turn.failed" not in text


async def test_h05_a_client_that_sends_no_request_in_time_is_cut_off(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """The time to send the request headers is bounded by [server] body_timeout_s, so a
    slow-header client holds its descriptor for seconds, not aiohttp's hour."""
    config = config_file(tmp_path, talk, llm, body_timeout_s=1.0)
    async with serve(config) as daemon:
        parts = urlsplit(daemon.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(PARTIAL_REQUEST)
        try:
            async with asyncio.timeout(5.0):
                assert await reader.read() == b""  # closed by the daemon, no answer
        finally:
            writer.close()
        assert await post_within(daemon, b"{}") == 400  # the listener still answers


async def test_h05_a_flood_of_bad_signatures_logs_a_bounded_number_of_lines(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """2,000 forged webhooks: each is refused with 401, and the log keeps a bounded
    number of webhook.bad_signature lines instead of one per request."""
    config = config_file(tmp_path, talk, llm)
    log = tmp_path / "talkbot.log"
    flood = 2000
    async with serve(config, log=log) as daemon, aiohttp.ClientSession() as session:
        headers = signed_headers(b"{}", secret="x" * 64)  # the wrong secret
        for _ in range(flood):
            async with session.post(f"{daemon.url}/webhook", data=b"{}", headers=headers) as r:
                assert r.status == 401
    events = [json.loads(line).get("event") for line in log.read_text().splitlines()]
    refused = events.count("webhook.bad_signature")
    assert 1 <= refused <= flood // 10


@pytest.mark.parametrize(
    ("fd_limit", "expected"),
    [
        (256, 192),  # a quarter kept back for the store, outgoing calls, DNS and logs
        (1024, 768),  # systemd's default soft limit
        (8192, 4096),  # the unit's LimitNOFILE: capped, each connection costs memory
        (100, 36),  # at least 64 are kept back
        (60, 1),
    ],
)
def test_h05_the_default_connection_cap_stays_below_the_descriptor_limit(
    fd_limit: int, expected: int
) -> None:
    assert default_max_connections(fd_limit) == expected


async def test_h05_a_kept_alive_connection_is_not_cut_at_the_header_deadline(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """The header deadline bounds a connection's first request only: a proxy that keeps a
    connection open and sends its next request later is answered on it (closing it at the
    deadline could cut a request already on its way; idle connections are aiohttp's
    keep-alive timeout's, and the gate's to close at the cap)."""
    config = config_file(tmp_path, talk, llm, body_timeout_s=1.0)
    request = b"POST /webhook HTTP/1.1\r\nHost: talkbot\r\nContent-Length: 2\r\n\r\n{}"
    async with serve(config) as daemon:
        parts = urlsplit(daemon.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for _ in range(2):
                writer.write(request)
                async with asyncio.timeout(5.0):
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 401"), head
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                await asyncio.sleep(1.5)  # past the header deadline, idle
        finally:
            writer.close()
