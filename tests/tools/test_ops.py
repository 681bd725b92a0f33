"""bot_logs and bot_restart: admins only, logs redacted and only in the admin room (L01, A01)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import structlog

from bot.logs import LogRing, Redactor, configure_logging
from bot.tools import Toolbox
from bot.tools.ops import RESTARTING, LogsArgs, RestartArgs, make_ops_tools, newest_lines
from tests.tools import context

ADMIN_ROOM = "adminroom1"
BOT_SECRET = "canary-bot-secret-0123456789abcdefghijklmnop"
API_KEY = "sk-canary-api-key-fedcba9876543210"
USER_TEXT = "my private note: the vault code is kiwi"


@pytest.fixture
def ring() -> Iterator[LogRing]:
    """The real logging pipeline with canary secrets; the previous config restored after."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access_level = logging.getLogger("aiohttp.access").level
    ring = LogRing()
    redactor = Redactor([BOT_SECRET, API_KEY])
    configure_logging(redactor=redactor, ring=ring, stream=io.StringIO(), json_lines=True)
    try:
        yield ring
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("aiohttp.access").setLevel(access_level)


class Restarts:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def restarts() -> Restarts:
    return Restarts()


@pytest.fixture
def box(ring: LogRing, restarts: Restarts) -> Toolbox:
    return Toolbox(make_ops_tools(ring, restarts, admin_room=lambda: ADMIN_ROOM))


ctx = partial(context.ctx, role="admin", uid="root", room=ADMIN_ROOM)


def log_some_secrets() -> None:
    log = structlog.get_logger("tests.ops")
    log.info("talk.sent", authorization=f"Bearer {API_KEY}", room="grouproom1")
    log.info("chat.received", text=USER_TEXT, actor="users/alice")
    log.warning("llm.failed", error=f"401 Unauthorized for key {API_KEY}")
    log.warning("webhook.rejected", secret=BOT_SECRET, reason="bad signature")
    log.info("talk.config", url=f"https://cloud.example/?s={BOT_SECRET}")
    log.info("chat.injected", room="grouproom1\nforged.event level=info")


async def test_l01_logs_tool_output_never_contains_a_secret(box: Toolbox) -> None:
    log_some_secrets()
    result = await box.execute("bot_logs", LogsArgs(lines=50), ctx())
    assert result.ok
    for canary in (BOT_SECRET, API_KEY, USER_TEXT, "kiwi"):
        assert canary not in result.text
    lines = result.text.splitlines()
    assert lines[0] == "last 6 log lines (secrets and message text redacted):"
    assert len(lines) == 7  # the CR/LF in a field did not make a forged extra line
    assert '"event": "talk.sent"' in lines[1]
    assert "[redacted]" in lines[1]
    assert '"text": "[39 chars]"' in lines[2]


async def test_l01_logs_are_capped_to_the_newest_lines(box: Toolbox) -> None:
    log = structlog.get_logger("tests.ops")
    for number in range(300):
        log.info("tick", number=number)
    result = await box.execute("bot_logs", LogsArgs(lines=200), ctx())
    lines = result.text.splitlines()[1:]
    assert 0 < len(lines) <= 200
    assert '"number": 299' in lines[-1]  # the newest line survives the size cap
    assert len(result.text) < 8000
    with pytest.raises(ValueError, match="less than or equal to 200"):
        LogsArgs(lines=201)


def test_l01_newest_lines_keep_the_end_within_the_budget() -> None:
    lines = [f"line {n} " + "x" * 90 for n in range(100)]
    kept = newest_lines(lines, budget=1000)  # 99 characters a line with its newline
    assert kept == lines[-10:]


@pytest.mark.parametrize("room", ["grouproom1", "dmroom01"])
async def test_l01_logs_are_refused_outside_the_admin_room(box: Toolbox, room: str) -> None:
    log_some_secrets()
    result = await box.execute("bot_logs", LogsArgs(), ctx(room=room))
    assert (result.ok, result.text) == (
        False,
        "refused: the logs can be read in the admin room only",
    )


async def test_l01_without_an_admin_room_the_logs_tool_never_answers(
    ring: LogRing, restarts: Restarts
) -> None:
    box = Toolbox(make_ops_tools(ring, restarts, admin_room=lambda: ""))
    result = await box.execute("bot_logs", LogsArgs(), ctx(room=""))
    assert not result.ok


async def test_l01_logs_output_taints_the_turn(box: Toolbox) -> None:
    tool = box.get("bot_logs")
    assert tool is not None
    assert tool.untrusted_output  # log lines quote what others sent


@pytest.mark.parametrize("role", ["guest", "user"])
async def test_a01_ops_tools_are_neither_offered_nor_run_for_non_admins(
    box: Toolbox, restarts: Restarts, role: Any
) -> None:
    assert box.specs_for(role) == []
    logs = await box.execute("bot_logs", LogsArgs(), ctx(role=role))
    restart = await box.execute("bot_restart", RestartArgs(), ctx(role=role), confirmed=True)
    assert not logs.ok
    assert not restart.ok
    assert restarts.count == 0


async def test_restart_needs_a_confirmation_and_restarts_once_per_confirmation(
    box: Toolbox, restarts: Restarts
) -> None:
    tool = box.get("bot_restart")
    assert tool is not None
    assert box.needs_confirmation(tool, RestartArgs(), ctx())
    refused = await box.execute("bot_restart", RestartArgs(), ctx())
    assert not refused.ok
    assert restarts.count == 0
    done = await box.execute("bot_restart", RestartArgs(), ctx(), confirmed=True)
    assert (done.ok, done.text) == (True, RESTARTING)
    assert restarts.count == 1


def test_restart_is_never_offered_to_unattended_turns(box: Toolbox) -> None:
    names = [spec["function"]["name"] for spec in box.specs_for("admin", unattended=True)]
    assert names == ["bot_logs"]
