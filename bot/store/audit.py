"""The audit trail: who asked for what, what was confirmed, what ran and how it ended."""

from __future__ import annotations

from bot.store.aggregate import Aggregate
from bot.store.records import AuditEntry


class Audit(Aggregate):
    async def audit(
        self,
        *,
        actor: str,
        room: str,
        action: str,
        tool: str = "",
        args_hash: str = "",
        outcome: str = "",
        detail: str = "",
    ) -> None:
        await self._engine.change(
            "INSERT INTO audit (at, actor, room, action, tool, args_hash, outcome, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self._clock.now(), actor, room, action, tool, args_hash, outcome, detail),
        )

    async def recent_audit(self, limit: int = 50) -> list[AuditEntry]:
        rows = await self._engine.read(
            "SELECT at, actor, room, action, tool, args_hash, outcome, detail FROM audit"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [AuditEntry(**row) for row in reversed(rows)]
