"""A hostile web page cannot take the daemon away from everybody else (H01).

The page is 135 KB of nested ``<ul><li>``: html2text's output grows with depth x lines,
so converting it costs about 40 s of CPU and 500 MB. It is served on 127.0.0.1; the
daemon may fetch it only through the test's fetch policy. ``FakeLLM.obey()`` makes each
turn do what its message says (``[[do http_fetch {...}]]``), so turns running at once in
several rooms need no shared script.

This module is also a ``[tools] modules`` plugin for the real-process test: its
``hostile_convert`` tool runs the daemon's own bounded conversion on the page, so SIGTERM
can arrive while a conversion is running.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel

from bot.tools import Tool, ToolContext, roles_from
from bot.tools.plugins import ToolDeps
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import (
    ONE2ONE,
    Daemon,
    base_config,
    create_event,
    dm_event,
    free_port,
    php_json,
    running_daemon,
)
from tests.test_process import serve, write_toml
from tests.test_tools_e2e import LoopbackOnly

pytestmark = pytest.mark.timing  # races a wall-clock deadline: run alone (scripts/check)

HOSTILE = "<html><body>" + "<ul><li>x" * 15_000 + "</body></html>"
NOTES = "the quarterly notes\n"
PROMPT_S = 5.0  # alice's answer, while the hostile conversions fail or run
SETTLE_S = 30.0  # every turn answered, the hostile ones included
STOP_S = 8.0  # SIGTERM to exit
MARK_ENV = "TALKBOT_H01_MARK"
# What a page over a limit comes back as (bot/tools/htmltext.py).
OVER_A_LIMIT = (
    "the page is too complex to convert",
    "the page took too long to convert",
    "the page is too large to convert",
    "the bot is busy converting other pages",
)


class Pages:
    """Serves the hostile page at /deep; counts requests."""

    def __init__(self) -> None:
        self.hits = 0
        self.url = ""
        self.port = 0

    async def deep(self, _request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=HOSTILE, content_type="text/html")


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    server = Pages()
    app = web.Application()
    app.router.add_get("/deep", server.deep)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{server.port}/deep"
    yield server
    await runner.cleanup()


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    path = root / "notes.txt"
    path.write_text(NOTES)
    return path


def hostile_daemon(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, pages: Pages, fetch: dict[str, Any]
) -> AbstractAsyncContextManager[Daemon]:
    """The daemon with alice as an admin (file_read) and fetches allowed to the page.

    Eight model slots: a turn holds one while its tools run, and this test is about the
    conversions, not about bob's turns taking every slot.
    """
    extra = {
        "access": {"admins": ["root", "alice"]},
        "llm": {"concurrency": 8},
        "tools": {"http_fetch": fetch},
    }
    return running_daemon(tmp_path, talk, llm, extra, fetch_policy=LoopbackOnly(pages.port))


def do(tool: str, args: dict[str, Any]) -> str:
    return f"[[do {tool} {json.dumps(args)}]]"


def tool_results(llm: FakeLLM) -> list[str]:
    """Every tool result the model was shown, once each."""
    seen: dict[str, str] = {}
    for request in llm.requests:
        for message in request.messages:
            if message.get("role") == "tool":
                seen[message["tool_call_id"]] = str(message["content"])
    return list(seen.values())


async def wait_until(condition: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109 - a deadline
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


BOB_ROOMS = [f"bobroom{n}" for n in range(6)]


@pytest.mark.parametrize(
    "fetch",
    [
        pytest.param({}, id="refused-by-depth"),
        # A depth cap this high lets the page into html2text: the time limit must stop it.
        pytest.param({"max_depth": 1_000_000, "convert_timeout_s": 2}, id="killed-at-time-limit"),
    ],
)
async def test_h01_six_hostile_pages_at_once_leave_another_room_answered_promptly(
    tmp_path: Path,
    *,
    talk: FakeTalk,
    llm: FakeLLM,
    pages: Pages,
    notes: Path,
    fetch: dict[str, Any],
) -> None:
    llm.obey()
    loop = asyncio.get_running_loop()
    async with hostile_daemon(tmp_path, talk, llm, pages, fetch) as daemon:
        for room in BOB_ROOMS:
            fetch_it = do("http_fetch", {"url": pages.url})
            assert (
                await daemon.post(create_event(f"talkbot {fetch_it}", sender="bob", room=room))
                == 200
            )
        await wait_until(lambda: pages.hits == 6, PROMPT_S, "bob's six pages fetched")
        started = loop.time()
        assert (
            await daemon.post(dm_event(do("file_read", {"path": notes.name}), sender="alice"))
            == 200
        )
        await wait_until(lambda: talk.texts(ONE2ONE), PROMPT_S, "alice answered")
        took = loop.time() - started
        bob_answered_by_then = sum(bool(talk.texts(room)) for room in BOB_ROOMS)
        await wait_until(
            lambda: all(talk.texts(room) for room in BOB_ROOMS), SETTLE_S, "bob answered"
        )
        await daemon.idle()
    assert took < PROMPT_S
    results = tool_results(llm)
    assert any(NOTES.strip() in result for result in results)  # alice's file_read ran
    hostile = [result for result in results if NOTES.strip() not in result]
    assert len(hostile) == 6
    assert all(any(limit in result for limit in OVER_A_LIMIT) for result in hostile), hostile
    assert all(len(talk.texts(room)) == 1 for room in BOB_ROOMS)
    if "convert_timeout_s" in fetch:  # alice was answered while bob's pages still converted
        assert bob_answered_by_then < 6


async def test_h01_six_hostile_fetches_in_one_turn_are_refused_within_seconds(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, pages: Pages
) -> None:
    llm.calls([("http_fetch", {"url": pages.url}, None)] * 6)
    llm.reply("That page cannot be read.")
    async with hostile_daemon(tmp_path, talk, llm, pages, {}) as daemon:
        ask = dm_event(f"talkbot read {pages.url} six times", sender="bob")
        texts = await asyncio.wait_for(daemon.say(ask), timeout=10)
    assert texts == ["That page cannot be read."]
    results = tool_results(llm)
    assert len(results) == 6
    assert all("too complex to convert (nesting deeper than 100)" in text for text in results)


# -- the real process: SIGTERM while a conversion runs ------------------------------------


class NoArgs(BaseModel):
    pass


def make_tools(deps: ToolDeps) -> list[Tool[Any]]:
    """The plugin: ``hostile_convert`` converts the page with the daemon's own converter."""
    mark = Path(os.environ[MARK_ENV])

    async def hostile_convert(_args: NoArgs, _ctx: ToolContext) -> str:
        mark.touch()  # noqa: ASYNC240 - an empty file: the test sends SIGTERM once it exists
        return await deps.fetcher.convert_html(HOSTILE)

    return [
        Tool(
            name="hostile_convert",
            description="Convert the hostile test page.",
            args=NoArgs,
            run=hostile_convert,
            roles=roles_from("user"),
            timeout_s=300,
        )
    ]


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


async def test_h01_sigterm_with_a_hostile_conversion_running_exits_0_within_seconds(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = tmp_path / "talkbot.toml"
    data = base_config(tmp_path, talk, llm, port=free_port())
    data["llm"]["timeout_s"] = 30
    data["tools"]["modules"] = ["tests.test_hostile_html"]
    # Only the stop can end this conversion: no depth cap, no time or memory limit in reach.
    data["tools"]["http_fetch"] = {
        "max_depth": 1_000_000,
        "convert_timeout_s": 300,
        "convert_memory_mb": 8192,
    }
    write_toml(config, data)
    mark = tmp_path / "converting"
    llm.call("hostile_convert", {})
    llm.reply("Stopped before the page was converted.")
    loop = asyncio.get_running_loop()
    async with serve(config, env={MARK_ENV: str(mark)}) as daemon:
        assert (
            await daemon.post(php_json(dm_event("talkbot convert the page", sender="alice"))) == 200
        )
        await wait_until(mark.exists, PROMPT_S, "the conversion started")
        workers = _children(daemon.proc.pid)
        daemon.proc.send_signal(signal.SIGTERM)
        started = loop.time()
        code = await asyncio.wait_for(daemon.proc.wait(), timeout=60)
        took = loop.time() - started
    assert (code, took < STOP_S) == (0, True), took
    assert workers  # the conversion ran in a worker process...
    await wait_until(lambda: not any(map(_alive, workers)), PROMPT_S, "workers gone")  # ...now gone
    assert talk.texts() == ["Stopped before the page was converted."]
