"""Per-room conversation memory in the store, trimmed to a count and a character budget.

Every entry keeps where its text came from (its provenance): a person (by actor id), the
bot's own words, or a tool's output, with labels for text that was not clean: ``untrusted``
(outside content, or an answer written after reading some) and ``private`` (files, logs).
``recall`` tells a turn whether what it is about to show the model holds anything the
requester did not write; tool output goes back to the model as tool output, never as the
bot's own words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.config import ChatSettings
from bot.store import HistoryEntry, Store
from bot.tools import TOOL_NAME

TOOL_RESULT_CHARS = 600
# Rows kept per room beyond what a prompt uses, so trimming runs rarely.
KEEP_FACTOR = 4
# A room's history is trimmed after this many new rows, whoever wrote them: a busy room
# where the bot rarely answers stays bounded too (H06), at one cheap DELETE per batch.
TRIM_EVERY = 16
UNTRUSTED = "untrusted"
PRIVATE = "private"
UNKNOWN_TOOL = "unknown_tool"


@dataclass(frozen=True)
class Provenance:
    """The labels of a bot or tool entry; stored as text (``HistoryEntry.provenance``)."""

    untrusted: bool = False
    private: bool = False

    def label(self) -> str:
        return ",".join(
            name for name, on in ((PRIVATE, self.private), (UNTRUSTED, self.untrusted)) if on
        )

    @classmethod
    def of(cls, label: str) -> Provenance:
        """Read a stored label; one this code does not know counts as untrusted."""
        parts = {part for part in label.split(",") if part}
        unknown = bool(parts - {UNTRUSTED, PRIVATE})
        return cls(untrusted=UNTRUSTED in parts or unknown, private=PRIVATE in parts)


@dataclass(frozen=True)
class Recall:
    """The history a turn shows the model, and whether any of it is not the requester's."""

    messages: list[dict[str, Any]]
    untrusted: bool


def message_entry(*, actor_id: str, actor_name: str, text: str, message_id: str) -> HistoryEntry:
    """A person's message as the room's history keeps it."""
    return HistoryEntry(
        role="user", content=text, actor_id=actor_id, actor_name=actor_name, message_id=message_id
    )


class History:
    def __init__(self, store: Store, settings: ChatSettings) -> None:
        self._store = store
        self._settings = settings
        self._untrimmed: dict[str, int] = {}  # room -> rows added since its last trim

    def reconfigure(self, settings: ChatSettings) -> None:
        self._settings = settings

    async def record_message(self, room: str, entry: HistoryEntry, *, once: bool = False) -> None:
        """A person's message (``message_entry``); every TRIM_EVERY rows the room is trimmed.
        ``once``: not if the room's history has that message already (an event redone after
        a restart)."""
        if once:
            if not await self._store.add_history_once(room, entry):
                return
        else:
            await self._store.add_history(room, entry)
        keep = self.trim_due(room)
        if keep is not None:
            await self._store.trim_history(room, keep)
        self.counted(room, trimmed=keep is not None)

    def trim_due(self, room: str) -> int | None:
        """The rows to keep if the room's next row is the one after which it is trimmed
        (then whoever stores it trims in the same commit), else None."""
        if self._untrimmed.get(room, 0) + 1 < TRIM_EVERY:
            return None
        return max(self._settings.history_messages, 1) * KEEP_FACTOR

    def counted(self, room: str, *, trimmed: bool) -> None:
        """A person's message was stored (here, or with its event when settled on arrival,
        #19), and the room trimmed with it when ``trim_due`` said so."""
        if trimmed:
            self._untrimmed.pop(room, None)
        else:
            self._untrimmed[room] = self._untrimmed.get(room, 0) + 1

    async def _trim(self, room: str) -> None:
        self._untrimmed.pop(room, None)
        await self._store.trim_history(room, max(self._settings.history_messages, 1) * KEEP_FACTOR)

    async def record_reply(
        self, room: str, text: str, *, untrusted: bool = True, private: bool = False
    ) -> None:
        """The bot's words; untrusted unless the caller knows its turn read nothing foreign
        (a confirmation prompt quotes the model's arguments, so it stays untrusted)."""
        label = Provenance(untrusted=untrusted, private=private).label()
        await self._store.add_history(
            room, HistoryEntry(role="assistant", content=text, provenance=label)
        )
        await self._trim(room)

    async def record_tool(
        self, room: str, tool: str, result: str, *, untrusted: bool = True, private: bool = False
    ) -> None:
        short = result if len(result) <= TOOL_RESULT_CHARS else result[:TOOL_RESULT_CHARS] + "…"
        label = Provenance(untrusted=untrusted, private=private).label()
        await self._store.add_history(
            room, HistoryEntry(role="tool", content=short, actor_name=tool, provenance=label)
        )

    async def forget(self, room: str) -> int:
        return await self._store.forget_history(room)

    async def messages(self, room: str) -> list[dict[str, Any]]:
        """Chat messages for the model, oldest first, newest kept when trimming."""
        return (await self.recall(room, requester="")).messages

    async def recall(self, room: str, *, requester: str) -> Recall:
        """What the model sees of the room, and whether it holds content ``requester``
        (an actor id) did not write: another person's message, outside content, or an
        answer written after reading some."""
        entries = await self._store.recent_history(room, self._settings.history_messages)
        budget = self._settings.history_chars
        kept: list[list[dict[str, Any]]] = []
        untrusted = False
        for index in range(len(entries) - 1, -1, -1):
            entry = entries[index]
            group = _as_messages(entry, index)
            budget -= sum(len(message["content"]) for message in group)
            if budget < 0 and kept:
                break
            kept.append(group)
            untrusted = untrusted or _foreign(entry, requester)
        kept.reverse()
        return Recall([message for group in kept for message in group], untrusted)


def _foreign(entry: HistoryEntry, requester: str) -> bool:
    if entry.role == "user":
        return not requester or entry.actor_id != requester
    if entry.role in ("assistant", "tool"):
        return Provenance.of(entry.provenance).untrusted
    return True


def _as_messages(entry: HistoryEntry, index: int) -> list[dict[str, Any]]:
    if entry.role == "assistant":
        return [{"role": "assistant", "content": entry.content}]
    if entry.role == "tool":
        # A tool result goes back as one: a call with its result, never the bot's words.
        name = entry.actor_name if TOOL_NAME.match(entry.actor_name) else UNKNOWN_TOOL
        call_id = f"history_{index}"
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}
        return [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {
                "role": "tool",
                "tool_call_id": call_id,
                "content": f"[{name} returned: {entry.content}]",
            },
        ]
    speaker = entry.actor_name or entry.actor_id or "someone"
    return [{"role": "user", "content": f"{speaker}: {entry.content}"}]
