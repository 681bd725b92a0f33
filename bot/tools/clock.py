"""The ``current_time`` tool: date and time in an IANA timezone, from the injected clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from bot.errors import ToolError
from bot.tools import Tool, ToolContext, roles_from


class CurrentTimeArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    timezone: str = Field(
        default="",
        max_length=64,
        description="IANA timezone name like Europe/Berlin; empty for the person's default",
    )


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown timezone {name!r}; use an IANA name like Europe/Berlin") from None


async def current_time(args: CurrentTimeArgs, ctx: ToolContext) -> str:
    name = args.timezone.strip() or ctx.timezone
    moment = datetime.fromtimestamp(ctx.now(), tz=_zone(name))
    return f"{moment:%A %Y-%m-%d %H:%M:%S} {moment.tzname()} (UTC{moment:%z}, {name})"


def make_clock_tools() -> list[Tool[CurrentTimeArgs]]:
    return [
        Tool(
            name="current_time",
            description="The current date and time in a timezone.",
            args=CurrentTimeArgs,
            run=current_time,
            roles=roles_from("user"),
            timeout_s=5,
        )
    ]
