"""The operator tools: ``bot_logs`` (recent redacted log lines) and ``bot_restart``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from bot.errors import ToolError
from bot.logs import LogRing
from bot.tools import Tool, ToolContext, roles_from

log = structlog.get_logger(__name__)

MAX_LOG_LINES = 200
LOG_CHARS = 7000  # stays under the toolbox's result cap, so the newest lines survive
RESTARTING = "restarting: the bot stops gracefully and systemd starts it again"


class LogsArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    lines: int = Field(
        default=50, ge=1, le=MAX_LOG_LINES, description=f"how many recent lines, 1-{MAX_LOG_LINES}"
    )


class RestartArgs(BaseModel):
    model_config = ConfigDict(frozen=True)


def newest_lines(lines: list[str], budget: int = LOG_CHARS) -> list[str]:
    """The newest lines that fit in ``budget`` characters, oldest first."""
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        used += len(line) + 1
        if used > budget:
            break
        kept.append(line)
    return kept[::-1]


def make_ops_tools(
    ring: LogRing, restart: Callable[[], None], *, admin_room: Callable[[], str]
) -> list[Tool[Any]]:
    """``restart`` asks the app for a graceful stop with the exit code systemd restarts on;
    ``admin_room`` gives the configured admin room's token (it may change on reload)."""

    async def bot_logs(args: LogsArgs, ctx: ToolContext) -> str:
        # Logs name other rooms and people: they are read in the admin room only (L01).
        room = admin_room()
        if not room or ctx.room != room:
            raise ToolError("refused: the logs can be read in the admin room only")
        lines = newest_lines(ring.tail(args.lines))
        if not lines:
            return "no log lines yet"
        return f"last {len(lines)} log lines (secrets and message text redacted):\n" + "\n".join(
            lines
        )

    async def bot_restart(_args: RestartArgs, ctx: ToolContext) -> str:
        log.warning("bot.restart_requested", actor=ctx.requester, room=ctx.room)
        restart()
        return RESTARTING

    admins = roles_from("admin")
    return [
        Tool(
            name="bot_logs",
            description="Recent log lines of the bot, secrets redacted (admin room only).",
            args=LogsArgs,
            run=bot_logs,
            roles=admins,
            timeout_s=5,
            reads_private=True,  # other rooms and people
            brings_untrusted=True,  # log lines quote what others sent (URLs, names, errors)
        ),
        Tool(
            name="bot_restart",
            description="Restart the bot: a graceful stop, then systemd starts it again.",
            args=RestartArgs,
            run=bot_restart,
            roles=admins,
            confirm=True,
            changes_state=True,
            timeout_s=5,
        ),
    ]
