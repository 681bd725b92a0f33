"""current_time: the injected clock, shown in the requested IANA timezone."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import pytest

from bot.config import Role
from bot.errors import ToolError
from bot.tools import Toolbox
from bot.tools.clock import CurrentTimeArgs, current_time, make_clock_tools
from tests.tools import context

# 2026-03-29 00:30 UTC: the night Europe/Berlin springs forward to summer time.
NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC).timestamp()


ctx = partial(context.ctx, now=NOW)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        pytest.param(
            "Europe/Berlin",
            "Sunday 2026-03-29 01:30:00 CET (UTC+0100, Europe/Berlin)",
            id="berlin_before_dst",
        ),
        pytest.param(
            "America/New_York",
            "Saturday 2026-03-28 20:30:00 EDT (UTC-0400, America/New_York)",
            id="new_york_previous_day",
        ),
        pytest.param("UTC", "Sunday 2026-03-29 00:30:00 UTC (UTC+0000, UTC)", id="utc"),
    ],
)
async def test_current_time_in_a_timezone(zone: str, expected: str) -> None:
    assert await current_time(CurrentTimeArgs(timezone=zone), ctx()) == expected


async def test_empty_timezone_uses_the_persons_default() -> None:
    text = await current_time(CurrentTimeArgs(), ctx(timezone="Asia/Tokyo"))
    assert text == "Sunday 2026-03-29 09:30:00 JST (UTC+0900, Asia/Tokyo)"


@pytest.mark.parametrize("zone", ["Mars/Base", "../../etc/passwd", "Europe/"])
async def test_unknown_timezone_is_a_clear_error(zone: str) -> None:
    with pytest.raises(ToolError) as caught:
        await current_time(CurrentTimeArgs(timezone=zone), ctx())
    assert str(caught.value) == (f"unknown timezone {zone!r}; use an IANA name like Europe/Berlin")


async def test_bad_timezone_reaches_the_model_as_a_failed_result() -> None:
    box = Toolbox(make_clock_tools())
    args = box.validate("current_time", '{"timezone": "Mars/Base"}')
    result = await box.execute("current_time", args, ctx())
    assert not result.ok
    assert result.text == "unknown timezone 'Mars/Base'; use an IANA name like Europe/Berlin"


@pytest.mark.parametrize(
    ("role", "offered"),
    [("none", False), ("guest", False), ("user", True), ("admin", True)],
)
def test_current_time_is_for_users_and_admins(role: Role, offered: bool) -> None:
    names = [s["function"]["name"] for s in Toolbox(make_clock_tools()).specs_for(role)]
    assert (names == ["current_time"]) is offered


def test_current_time_needs_no_confirmation() -> None:
    box = Toolbox(make_clock_tools())
    tool = box.get("current_time")
    assert tool is not None
    assert not box.needs_confirmation(tool, CurrentTimeArgs(timezone="UTC"), ctx())
