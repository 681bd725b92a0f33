"""Roles set with ``!role``: they apply on top of the config's (bot/access.py). A change
raises the "roles" revision: other replicas reload them."""

from __future__ import annotations

from bot.store.aggregate import Aggregate
from bot.store.engine import Tx
from bot.store.records import RoleOverride
from bot.store.replicas import bump


class Roles(Aggregate):
    async def set_role_override(self, uid: str, role: str, *, set_by: str) -> None:
        row = (uid, role, set_by, self._clock.now())

        def upsert(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO role_overrides (uid, role, set_by, set_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (uid) DO UPDATE SET role = excluded.role,"
                " set_by = excluded.set_by, set_at = excluded.set_at",
                row,
            )
            bump(tx, "roles")

        await self._engine.apply(upsert)

    async def remove_role_override(self, uid: str) -> bool:
        def delete(tx: Tx) -> bool:
            removed = tx.execute("DELETE FROM role_overrides WHERE uid = ?", (uid,)).rowcount
            if removed:
                bump(tx, "roles")
            return removed > 0

        return await self._engine.apply(delete)

    async def role_overrides(self) -> dict[str, RoleOverride]:
        rows = await self._engine.read("SELECT uid, role, set_by, set_at FROM role_overrides")
        return {row["uid"]: RoleOverride(**row) for row in rows}
