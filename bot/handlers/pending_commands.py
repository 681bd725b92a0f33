"""``!pending``, ``!approve``, ``!cancel`` and ``!restart``: the admin's side of confirmations."""

from __future__ import annotations

from collections.abc import Callable

from bot.handlers.admin import CommandSpec
from bot.handlers.approvals import Approvals
from bot.i18n import N_, _
from bot.talk.events import Event


class PendingCommands:
    """``!pending``, ``!approve``, ``!cancel`` and ``!restart``, built on the approvals."""

    def __init__(
        self,
        approvals: Approvals,
        *,
        prefix: Callable[[], str],
    ) -> None:
        self._approvals = approvals
        self._prefix = prefix

    def specs(self) -> dict[str, CommandSpec]:
        return {
            "pending": CommandSpec(
                "pending [CODE]",
                N_("open confirmations in every room, or one call with its arguments in full"),
                self._pending,
            ),
            "approve": CommandSpec(
                "approve CODE",
                N_("run a waiting action for its requester (where allowed)"),
                self._approve,
            ),
            "cancel": CommandSpec("cancel CODE", N_("cancel a waiting action"), self._cancel),
            "restart": CommandSpec(
                "restart",
                N_("stop gracefully so systemd starts a fresh process (asks first)"),
                self._restart,
            ),
        }

    async def _restart(self, event: Event, _args: str) -> str:
        """Asks for a yes like any dangerous tool (its prompt is the answer), then stops."""
        await self._approvals.ask_for_command(event, "bot_restart")
        return ""

    async def _pending(self, _event: Event, args: str) -> str:
        code = args.strip()
        if code:
            return await self._approvals.details(code)
        return await self._approvals.listing()

    async def _approve(self, event: Event, args: str) -> str:
        code = args.strip()
        if not code:
            return _("Usage: `{prefix}approve CODE` (see `{prefix}pending`)").format(
                prefix=self._prefix()
            )
        return await self._approvals.approve_by_admin(code, event.actor.id)

    async def _cancel(self, event: Event, args: str) -> str:
        code = args.strip()
        if not code:
            return _("Usage: `{prefix}cancel CODE` (see `{prefix}pending`)").format(
                prefix=self._prefix()
            )
        return await self._approvals.cancel_by_admin(code, event.actor.id)
