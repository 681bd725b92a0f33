"""A dangerous tool for the chaos test, loaded into `talkbot serve` through ``[tools] modules``.

``chaos_mark(token)`` appends one line, the token, to the file named by
``TALKBOT_CHAOS_LEDGER`` and then takes a moment (a slow side effect, so a kill lands
between "it ran" and "it is marked done" often). The test reads the file back: a token
twice is a confirmed action that ran twice (A10).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bot.tools import Tool, ToolContext, roles_from
from bot.tools.plugins import ToolDeps

LEDGER_ENV = "TALKBOT_CHAOS_LEDGER"
TOKEN_PATTERN = r"^t\d{1,6}$"
SETTLE_S = 0.15  # the tool's own slowness, after the side effect


class MarkArgs(BaseModel):
    token: str = Field(pattern=TOKEN_PATTERN, description="the token to write, like t12")


def append_line(path: Path, line: str) -> None:
    """One write(2) with O_APPEND: a line is whole or absent, even across a kill -9."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def make_tools(deps: ToolDeps) -> list[Tool[Any]]:
    del deps  # the ledger path comes from the environment, like a real module's credential
    ledger = Path(os.environ[LEDGER_ENV])

    async def mark(args: MarkArgs, ctx: ToolContext) -> str:
        del ctx
        append_line(ledger, args.token)
        await asyncio.sleep(SETTLE_S)
        return f"marked {args.token}"

    return [
        Tool(
            name="chaos_mark",
            description="Write a token to the chaos ledger (not idempotent).",
            args=MarkArgs,
            run=mark,
            roles=roles_from("admin"),
            confirm=True,
        )
    ]
