"""A room's waiting events: first in first out per person, people in rotation, fair places.

Only chat turns count against the room's places; when they are full, a newcomer takes the
newest place of whoever holds the most (a fair share, not a fixed per-person cap: one
person alone in a note-to-self room may still use them all). An answer to a prompt or a
command is never dropped for anyone else's traffic (H02, R07).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from bot.store import InboxItem


@dataclass(frozen=True)
class Waiting:
    item: InboxItem
    sender: str  # "" when nobody is known (no triage, or it failed): takes no one's place
    chat: bool  # a chat turn: counts against the room's places


class RoomQueue:
    """One room's waiting events: first in first out per person, people in rotation."""

    def __init__(self) -> None:
        self._people: dict[str, collections.deque[Waiting]] = {}
        self.chats = 0

    def __bool__(self) -> bool:
        return bool(self._people)

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._people.values())

    def waiting(self, sender: str, *, chat: bool) -> int:
        return sum(w.chat is chat for w in self._people.get(sender, ()))

    def push(self, waiting: Waiting) -> None:
        self._people.setdefault(waiting.sender, collections.deque()).append(waiting)
        self.chats += waiting.chat

    def place(self, waiting: Waiting, cap: int) -> tuple[bool, Waiting | None]:
        """Whether ``waiting`` may wait, and the turn taken back to make room for it.

        A full room makes room for someone with fewer: the newest of the biggest
        holder's turns goes (its sender gets the busy notice).
        """
        if not waiting.chat:
            # Answers and commands are never crowded out; this bounds only memory, and
            # only ever drops what this one person already has waiting in this room.
            return self.waiting(waiting.sender, chat=False) < cap, None
        if self.chats < cap:
            return True, None
        holder, held = self.biggest()
        mine = self.waiting(waiting.sender, chat=True)
        if not waiting.sender or held - 1 <= mine:
            return False, None  # a swap would be no fairer
        return True, self.drop_newest(holder)

    def refuses_chat(self, sender: str, cap: int) -> bool:
        """Whether ``place`` would refuse a chat turn of ``sender`` and take back nobody's:
        what a flooded room does to its flooder's next question."""
        if self.chats < cap:
            return False
        _holder, held = self.biggest()
        return not sender or held - 1 <= self.waiting(sender, chat=True)

    def biggest(self) -> tuple[str, int]:
        """The person with the most chat turns waiting, and how many."""
        held = {sender: self.waiting(sender, chat=True) for sender in self._people}
        sender = max(held, key=held.__getitem__, default="")
        return sender, held.get(sender, 0)

    def drop_newest(self, sender: str) -> Waiting:
        """Take back the newest chat turn ``sender`` has waiting."""
        queue = self._people[sender]
        newest = next(w for w in reversed(queue) if w.chat)
        queue.remove(newest)
        if not queue:
            del self._people[sender]
        self.chats -= 1
        return newest

    def pop(self) -> Waiting:
        sender = next(iter(self._people))
        queue = self._people.pop(sender)
        waiting = queue.popleft()
        if queue:
            self._people[sender] = queue  # to the back of the rotation
        self.chats -= waiting.chat
        return waiting

    def clear(self) -> None:
        self._people.clear()
        self.chats = 0
