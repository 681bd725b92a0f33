"""Roles set with ``!role``: they apply on top of the config's (bot/access.py)."""

from __future__ import annotations

from bot.store.aggregate import Aggregate
from bot.store.records import RoleOverride


class Roles(Aggregate):
    async def set_role_override(self, uid: str, role: str, *, set_by: str) -> None:
        await self._engine.change(
            "INSERT INTO role_overrides (uid, role, set_by, set_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (uid) DO UPDATE SET role = excluded.role, set_by = excluded.set_by,"
            " set_at = excluded.set_at",
            (uid, role, set_by, self._clock.now()),
        )

    async def remove_role_override(self, uid: str) -> bool:
        return await self._engine.change("DELETE FROM role_overrides WHERE uid = ?", (uid,)) > 0

    async def role_overrides(self) -> dict[str, RoleOverride]:
        rows = await self._engine.read("SELECT uid, role, set_by, set_at FROM role_overrides")
        return {row["uid"]: RoleOverride(**row) for row in rows}
