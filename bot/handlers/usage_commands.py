"""``!usage``: model tokens today, one's own in any room, anyone's for admins (#16)."""

from __future__ import annotations

from collections.abc import Callable

from bot import replies
from bot.config import Role
from bot.handlers.admin import CommandSpec
from bot.i18n import N_
from bot.quotas import PersonUsage, Quotas, person_of
from bot.talk.events import Event


class UsageCommands:
    """``!usage`` (DESIGN.md §7): in any room, the asker's own tokens today and their
    limit; in the admin room, anyone's (``!usage UID``) or the day's top people and rooms."""

    def __init__(
        self, quotas: Quotas, *, role_of: Callable[[str], Role], prefix: Callable[[], str]
    ) -> None:
        self._quotas = quotas
        self._role_of = role_of
        self._prefix = prefix

    def specs(self) -> dict[str, CommandSpec]:
        return {
            "usage": CommandSpec(
                "usage [UID]",
                N_("model tokens today: one person's, or the top people and rooms"),
                self.in_admin_room,
            )
        }

    async def in_room(self, event: Event, role: Role, args: str) -> str:
        """The room command, for anyone with a role: their own figures only."""
        me = person_of(event.actor.id)
        if args.strip() and person_of(args.strip()) != me:
            return replies.usage_only_own(self._prefix())
        usage = await self._quotas.of_person(me, role)
        room_limit = self._quotas.limits.tokens_per_room_day
        room = None
        if room_limit and not usage.exempt:
            room = ((await self._quotas.of_room(event.room.token)).total, room_limit)
        return "\n".join(self._person_lines(usage, own=True, room=room))

    async def in_admin_room(self, _event: Event, args: str) -> str:
        """The admin command: one person's figures, or the whole day's."""
        asked = args.strip()
        if not asked:
            return await self._summary()
        actor = asked if "/" in asked else f"users/{asked}"
        usage = await self._quotas.of_person(person_of(asked), self._role_of(actor))
        return "\n".join(self._person_lines(usage, own=False))

    def _person_lines(
        self, usage: PersonUsage, *, own: bool, room: tuple[int, int] | None = None
    ) -> list[str]:
        """Heading, tokens, limit, then the room's (used, limit) if given, and the cost."""
        tokens, quotas = usage.tokens, self._quotas
        lines = [
            replies.usage_heading(
                None if own else usage.person, usage.day.isoformat(), quotas.timezone
            ),
            replies.usage_tokens(tokens.total, tokens.prompt, tokens.completion, tokens.turns),
        ]
        if tokens.estimated:
            lines.append(replies.usage_estimated())
        if usage.limit:
            now = quotas.now()
            lines.append(replies.usage_limit(usage.limit, tokens.total, usage.resets_at, now=now))
        else:
            lines.append(replies.usage_unlimited(exempt=usage.exempt))
        if room is not None:
            lines.append(replies.usage_room(*room))
        cost = quotas.cost(tokens)
        if cost is not None:
            lines.append(replies.usage_cost(cost, quotas.limits.currency))
        return lines

    async def _summary(self) -> str:
        quotas = self._quotas
        summary = await quotas.summary()
        total, limits = summary.total, quotas.limits
        lines = [replies.usage_summary_heading(quotas.today().isoformat(), quotas.timezone)]
        if not total.turns and not total.total:
            return "\n".join([*lines, replies.usage_nothing_yet()])
        lines.append(replies.usage_tokens(total.total, total.prompt, total.completion, total.turns))
        if total.estimated:
            lines.append(replies.usage_estimated())
        cost = quotas.cost(total)
        if cost is not None:
            lines.append(replies.usage_cost(cost, limits.currency))
        lines.append(replies.usage_limits(limits.tokens_per_day, limits.tokens_per_room_day))
        for kind, rows in (("people", summary.people), ("rooms", summary.rooms)):
            lines += replies.usage_top(
                kind, [(name, t.total, t.turns, t.estimated) for name, t in rows]
            )
        return "\n".join(lines)
