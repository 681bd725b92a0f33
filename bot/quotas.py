"""Daily token quotas (``[limits]``): which limit applies to a person and to a room,
whether a turn may start, and the record of what each turn used (the store's usage).

A day is the calendar day in ``[chat] timezone``; it resets at the next local midnight.
A person's limit is the first that is set of ``[limits.roles.<their role>]``, the highest
of ``[limits.groups.<group>]`` over their Nextcloud groups (0 there is unlimited, so it
wins), and ``[limits] tokens_per_day``. Admins are exempt from both quotas unless
``[limits.roles.admin]`` is set. A turn that starts under a limit runs to its end: the
quota stops the next one, never a turn half-way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import structlog

from bot.access import GroupsOf, no_groups
from bot.clock import Clock
from bot.config import LimitsSettings, Role
from bot.store import Store, TokenCount, UsageSummary

log = structlog.get_logger(__name__)


def person_of(actor_id: str) -> str:
    """The name a person's tokens are kept under: the user id ("alice" for users/alice),
    a guest's whole actor id, or a config job's owner ("config")."""
    return actor_id.removeprefix("users/")


@dataclass(frozen=True)
class OverQuota:
    """Why a turn may not start: whose quota, how large, how much is used, until when."""

    scope: Literal["person", "room"]
    limit: int
    used: int
    resets_at: datetime  # the next local midnight, in [chat] timezone


@dataclass(frozen=True)
class PersonUsage:
    """A person's tokens today and the limit that applies to them (0: none)."""

    person: str
    day: date
    tokens: TokenCount
    limit: int
    exempt: bool  # an admin, while [limits.roles.admin] is not set
    resets_at: datetime


class Quotas:
    """The quotas and the accounting; the settings are read at each call (``!reload``)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        limits: Callable[[], LimitsSettings],
        timezone: Callable[[], str],
        groups_of: GroupsOf = no_groups,
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits
        self._timezone = timezone
        self._groups_of = groups_of

    @property
    def limits(self) -> LimitsSettings:
        return self._limits()

    @property
    def timezone(self) -> str:
        return self._timezone()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), ZoneInfo(self._timezone()))

    def today(self) -> date:
        return self.now().date()

    def resets_at(self) -> datetime:
        """The next local midnight (01:00 where a clock change skips midnight)."""
        zone = ZoneInfo(self._timezone())
        midnight = datetime.combine(self.today() + timedelta(days=1), time(0), zone)
        return datetime.fromtimestamp(midnight.timestamp(), zone)

    def exempt(self, role: Role) -> bool:
        return role == "admin" and "admin" not in self._limits().roles

    def person_limit(self, person: str, role: Role) -> int:
        """The daily tokens ``person`` may use with ``role``; 0 means no limit."""
        limits = self._limits()
        if self.exempt(role):
            return 0
        if role in limits.roles:
            return limits.roles[role].tokens_per_day
        groups = [
            limits.groups[group].tokens_per_day
            for group in self._groups_of(person) or ()
            if group in limits.groups
        ]
        if groups:
            return 0 if 0 in groups else max(groups)
        return limits.tokens_per_day

    async def check(self, actor_id: str, room: str, role: Role) -> OverQuota | None:
        """Whether a turn for ``actor_id`` in ``room`` may start: None, or the quota that
        is used up (the person's first, then the room's)."""
        if self.exempt(role):
            return None
        person, day = person_of(actor_id), self.today()
        limit = self.person_limit(person, role)
        if limit and (used := (await self._store.tokens_of_person(day, person)).total) >= limit:
            return self._over("person", limit, used, actor_id, room)
        limit = self._limits().tokens_per_room_day
        if limit and (used := (await self._store.tokens_of_room(day, room)).total) >= limit:
            return self._over("room", limit, used, actor_id, room)
        return None

    def _over(
        self, scope: Literal["person", "room"], limit: int, used: int, actor_id: str, room: str
    ) -> OverQuota:
        log.info("quota.reached", scope=scope, limit=limit, used=used, actor=actor_id, room=room)
        return OverQuota(scope, limit, used, self.resets_at())

    async def record(self, actor_id: str, room: str, count: TokenCount) -> None:
        """Add what a turn (or a run of it, around a confirmation) used to today's sums."""
        if count.total or count.turns:
            await self._store.record_usage(self.today(), person_of(actor_id), room, count)

    async def of_person(self, person: str, role: Role) -> PersonUsage:
        """``!usage``: a person's tokens today and their limit."""
        day = self.today()
        return PersonUsage(
            person=person,
            day=day,
            tokens=await self._store.tokens_of_person(day, person),
            limit=self.person_limit(person, role),
            exempt=self.exempt(role),
            resets_at=self.resets_at(),
        )

    async def of_room(self, room: str) -> TokenCount:
        return await self._store.tokens_of_room(self.today(), room)

    async def summary(self, top: int = 10) -> UsageSummary:
        """``!usage`` in the admin room: today's tokens, top people and rooms."""
        return await self._store.usage_of_day(self.today(), top)

    def cost(self, tokens: TokenCount) -> float | None:
        """What ``tokens`` cost at the configured prices; None when no price is set."""
        limits = self._limits()
        if not limits.priced:
            return None
        return (
            tokens.prompt * limits.price_per_1k_prompt
            + tokens.completion * limits.price_per_1k_completion
        ) / 1000
