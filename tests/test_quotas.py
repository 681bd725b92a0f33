"""Daily token quotas on a real store: which limit applies to whom (role, Nextcloud
groups, the default; admins), the room's, and when a day ends in ``[chat] timezone``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.clock import ManualClock
from bot.config import LimitsSettings, Role
from bot.quotas import Quotas
from bot.store import Store, TokenCount

BERLIN = ZoneInfo("Europe/Berlin")
GROUPS = {"alice": ("staff", "research"), "bob": ("staff",), "carol": ("interns", "free")}


@pytest.fixture
async def store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Store]:
    opened = Store.open(tmp_path / "db.sqlite3", clock)
    yield opened
    await opened.close()


def quotas_with(store: Store, clock: ManualClock, **limits: Any) -> Quotas:
    settings = LimitsSettings.model_validate(limits)
    return Quotas(
        store,
        clock,
        limits=lambda: settings,
        timezone=lambda: "Europe/Berlin",
        groups_of=GROUPS.get,
    )


def tokens(used: int) -> TokenCount:
    return TokenCount(used, 0, 1)


@pytest.mark.parametrize(
    ("limits", "who", "expected"),
    [
        pytest.param({"tokens_per_day": 100}, ("dave", "user"), 100, id="the_default"),
        pytest.param({}, ("dave", "user"), 0, id="unlimited_by_default"),
        pytest.param(
            {"tokens_per_day": 100, "groups": {"staff": {"tokens_per_day": 500}}},
            ("bob", "user"),
            500,
            id="a_group_overrides_the_default",
        ),
        pytest.param(
            {"tokens_per_day": 100, "groups": {"research": {"tokens_per_day": 900}}},
            ("bob", "user"),
            100,
            id="other_groups_limits_are_not_yours",
        ),
        pytest.param(
            {
                "tokens_per_day": 100,
                "groups": {"staff": {"tokens_per_day": 500}, "research": {"tokens_per_day": 900}},
            },
            ("alice", "user"),
            900,
            id="the_highest_of_a_persons_groups",
        ),
        pytest.param(
            {
                "tokens_per_day": 100,
                "groups": {"interns": {"tokens_per_day": 50}, "free": {"tokens_per_day": 0}},
            },
            ("carol", "user"),
            0,
            id="a_group_without_limit_is_the_highest",
        ),
        pytest.param(
            {
                "tokens_per_day": 100,
                "roles": {"user": {"tokens_per_day": 300}},
                "groups": {"research": {"tokens_per_day": 900}},
            },
            ("alice", "user"),
            300,
            id="a_roles_own_limit_comes_first",
        ),
        pytest.param(
            {"tokens_per_day": 100, "roles": {"guest": {"tokens_per_day": 10}}},
            ("guests/abc", "guest"),
            10,
            id="guests",
        ),
        pytest.param({"tokens_per_day": 100}, ("root", "admin"), 0, id="admins_exempt"),
        pytest.param(
            {"tokens_per_day": 100, "roles": {"admin": {"tokens_per_day": 1000}}},
            ("root", "admin"),
            1000,
            id="admins_limited_when_configured",
        ),
    ],
)
def test_which_limit_applies(
    store: Store,
    clock: ManualClock,
    limits: dict[str, Any],
    who: tuple[str, Role],
    expected: int,
) -> None:
    assert quotas_with(store, clock, **limits).person_limit(*who) == expected


async def test_a_person_is_stopped_at_their_limit_and_a_new_day_lets_them_in(
    store: Store, clock: ManualClock
) -> None:
    clock.set(datetime(2026, 5, 4, 23, 50, tzinfo=BERLIN))  # 21:50 UTC: Berlin's day ends
    quotas = quotas_with(store, clock, tokens_per_day=100)
    await quotas.record("users/alice", "r1", tokens(99))
    assert await quotas.check("users/alice", "r1", "user") is None
    await quotas.record("users/alice", "r2", tokens(1))  # every room counts
    over = await quotas.check("users/alice", "r1", "user")
    assert over is not None
    assert (over.scope, over.limit, over.used) == ("person", 100, 100)
    assert over.resets_at == datetime(2026, 5, 5, 0, 0, tzinfo=BERLIN)
    assert await quotas.check("users/bob", "r1", "user") is None  # others go on
    clock.set(datetime(2026, 5, 5, 0, 0, 1, tzinfo=BERLIN))  # still 4 May in UTC
    assert await quotas.check("users/alice", "r1", "user") is None
    assert await store.tokens_of_person(date(2026, 5, 4), "alice") == TokenCount(100, 0, 2)


async def test_a_room_is_stopped_at_its_limit_for_everyone_but_exempt_admins(
    store: Store, clock: ManualClock
) -> None:
    quotas = quotas_with(store, clock, tokens_per_room_day=500)
    await quotas.record("users/alice", "r1", tokens(300))
    await quotas.record("users/bob", "r1", tokens(200))
    over = await quotas.check("users/carol", "r1", "user")
    assert over is not None
    assert (over.scope, over.limit, over.used) == ("room", 500, 500)
    assert await quotas.check("users/carol", "r2", "user") is None
    assert await quotas.check("users/root", "r1", "admin") is None
    limited = quotas_with(
        store, clock, tokens_per_room_day=500, roles={"admin": {"tokens_per_day": 0}}
    )
    assert await limited.check("users/root", "r1", "admin") is not None


async def test_the_day_resets_at_local_midnight_even_when_the_clock_changes_that_night(
    store: Store, clock: ManualClock
) -> None:
    havana = ZoneInfo("America/Havana")  # its spring change skips 00:00-01:00
    clock.set(datetime(2026, 3, 7, 22, 0, tzinfo=havana))
    quotas = Quotas(store, clock, limits=LimitsSettings, timezone=lambda: "America/Havana")
    reset = quotas.resets_at()
    assert (reset.date(), f"{reset:%H:%M}") == (date(2026, 3, 8), "01:00")
    assert reset.timestamp() - clock.now() == 2 * 3600  # two real hours later


async def test_nothing_is_written_for_a_run_that_used_nothing(
    store: Store, clock: ManualClock
) -> None:
    quotas = quotas_with(store, clock)
    await quotas.record("users/alice", "r1", TokenCount())
    assert (await quotas.summary()).people == ()


def test_the_cost_uses_the_prices_per_thousand_tokens(store: Store, clock: ManualClock) -> None:
    priced = quotas_with(store, clock, price_per_1k_prompt=0.5, price_per_1k_completion=2)
    assert priced.cost(TokenCount(3000, 500)) == pytest.approx(2.5)
    assert quotas_with(store, clock).cost(TokenCount(3000, 500)) is None
