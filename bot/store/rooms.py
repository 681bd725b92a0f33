"""Rooms the bot has seen: their name, kind, mode (``!mode``) and whether it is in them."""

from __future__ import annotations

from bot.store.aggregate import Aggregate
from bot.store.engine import Row
from bot.store.records import RoomRecord

_INSERT = (
    "INSERT INTO rooms (token, name, one_to_one, joined, first_seen, last_seen)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO UPDATE SET"
    " name = excluded.name, one_to_one = excluded.one_to_one, last_seen = excluded.last_seen"
)
_ROOM = "SELECT token, name, one_to_one, mode, joined, last_seen FROM rooms"


class Rooms(Aggregate):
    async def record_room(
        self, token: str, *, name: str, one_to_one: bool, joined: bool | None = None
    ) -> None:
        """Remember a room as last seen now; ``joined`` None keeps what was known (or 1)."""
        now = self._clock.now()
        sql = _INSERT if joined is None else f"{_INSERT}, joined = excluded.joined"
        row = (token, name, int(one_to_one), 1 if joined is None else int(joined), now, now)
        await self._engine.change(sql, row)

    async def get_room(self, token: str) -> RoomRecord | None:
        row = await self._engine.read_one(f"{_ROOM} WHERE token = ?", (token,))
        return None if row is None else _room(row)

    async def list_rooms(self) -> list[RoomRecord]:
        return [_room(row) for row in await self._engine.read(f"{_ROOM} ORDER BY token")]

    async def set_room_mode(self, token: str, mode: str | None) -> None:
        now = self._clock.now()
        await self._engine.change(
            "INSERT INTO rooms (token, mode, first_seen, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (token) DO UPDATE SET mode = excluded.mode",
            (token, mode, now, now),
        )


def _room(row: Row) -> RoomRecord:
    return RoomRecord(
        token=row["token"],
        name=row["name"],
        one_to_one=bool(row["one_to_one"]),
        mode=row["mode"],
        joined=bool(row["joined"]),
        last_seen=row["last_seen"],
    )
