"""Each room's conversation as the model sees it, with where each text came from (#13)."""

from __future__ import annotations

from bot.store.aggregate import Aggregate
from bot.store.records import HistoryEntry

INSERT_HISTORY = (
    "INSERT INTO history (room, role, actor_id, actor_name, content, message_id,"
    " created_at, provenance) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

# The same row, unless its room has the message already. Params: the row's, room, message id.
INSERT_HISTORY_ONCE = (
    "INSERT INTO history (room, role, actor_id, actor_name, content, message_id,"
    " created_at, provenance) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
    " (SELECT 1 FROM history WHERE room = ? AND message_id = ?)"
)

# Keep a room's newest N rows; the index walks only those (H06). Params: room, room, N.
TRIM_HISTORY = (
    "DELETE FROM history WHERE room = ? AND id <= (SELECT id FROM history"
    " WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)


def history_row(
    room: str, entry: HistoryEntry, now: float
) -> tuple[str, str, str, str, str, str | None, float, str]:
    return (
        room,
        entry.role,
        entry.actor_id,
        entry.actor_name,
        entry.content,
        entry.message_id,
        entry.created_at or now,
        entry.provenance,
    )


class History(Aggregate):
    async def add_history(self, room: str, entry: HistoryEntry) -> None:
        await self._engine.change(INSERT_HISTORY, history_row(room, entry, self._clock.now()))

    async def add_history_once(self, room: str, entry: HistoryEntry) -> bool:
        """A person's message, unless the room's history has its message id already;
        whether it was added. For an event redone after a restart only: the check walks
        the room's rows (few, trimmed: H06), which every message need not pay for."""
        row = history_row(room, entry, self._clock.now())
        added = await self._engine.change(INSERT_HISTORY_ONCE, (*row, room, entry.message_id))
        return added > 0

    async def recent_history(self, room: str, limit: int) -> list[HistoryEntry]:
        """The last ``limit`` entries of a room, oldest first."""
        rows = await self._engine.read(
            "SELECT role, content, actor_id, actor_name, message_id, created_at, provenance"
            " FROM history WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, limit),
        )
        return [HistoryEntry(**row) for row in reversed(rows)]

    async def forget_history(self, room: str) -> int:
        return await self._engine.change("DELETE FROM history WHERE room = ?", (room,))

    async def trim_history(self, room: str, keep: int) -> None:
        """Keep a room's newest ``keep`` rows; the index walks only those (H06)."""
        await self._engine.change(TRIM_HISTORY, (room, room, keep))
