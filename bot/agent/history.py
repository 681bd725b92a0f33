"""Per-room conversation memory in the store, trimmed to a count and a character budget."""

from __future__ import annotations

from typing import Any

from bot.config import ChatSettings
from bot.store import HistoryEntry, Store

TOOL_RESULT_CHARS = 600
# Rows kept per room beyond what a prompt uses, so trimming runs rarely.
KEEP_FACTOR = 4


class History:
    def __init__(self, store: Store, settings: ChatSettings) -> None:
        self._store = store
        self._settings = settings

    def reconfigure(self, settings: ChatSettings) -> None:
        self._settings = settings

    async def record_message(
        self, room: str, *, actor_id: str, actor_name: str, text: str, message_id: str
    ) -> None:
        await self._store.add_history(
            room,
            HistoryEntry(
                role="user",
                content=text,
                actor_id=actor_id,
                actor_name=actor_name,
                message_id=message_id,
            ),
        )

    async def record_reply(self, room: str, text: str) -> None:
        await self._store.add_history(room, HistoryEntry(role="assistant", content=text))
        await self._store.trim_history(room, max(self._settings.history_messages, 1) * KEEP_FACTOR)

    async def record_tool(self, room: str, tool: str, result: str) -> None:
        short = result if len(result) <= TOOL_RESULT_CHARS else result[:TOOL_RESULT_CHARS] + "…"
        await self._store.add_history(
            room, HistoryEntry(role="tool", content=short, actor_name=tool)
        )

    async def forget(self, room: str) -> int:
        return await self._store.forget_history(room)

    async def messages(self, room: str) -> list[dict[str, Any]]:
        """Chat messages for the model, oldest first, newest kept when trimming."""
        entries = await self._store.recent_history(room, self._settings.history_messages)
        budget = self._settings.history_chars
        kept: list[dict[str, Any]] = []
        for entry in reversed(entries):
            message = _as_message(entry)
            budget -= len(message["content"])
            if budget < 0 and kept:
                break
            kept.append(message)
        kept.reverse()
        return kept


def _as_message(entry: HistoryEntry) -> dict[str, Any]:
    if entry.role == "assistant":
        return {"role": "assistant", "content": entry.content}
    if entry.role == "tool":
        return {"role": "assistant", "content": f"[{entry.actor_name} returned: {entry.content}]"}
    speaker = entry.actor_name or entry.actor_id or "someone"
    return {"role": "user", "content": f"{speaker}: {entry.content}"}
