"""Model tokens per person, room and day (``!usage``, ``[limits]`` quotas), kept as sums.

A day is a calendar date in the zone the caller chose (``[chat] timezone``); a person is
the key the caller gives (the user id, or a guest's actor id). Each turn adds to its row.
"""

from __future__ import annotations

from datetime import date

from bot.store.aggregate import Aggregate
from bot.store.engine import Dialect, Row, Tx
from bot.store.records import TokenCount, UsageSummary

_ADD_ROW = (
    "INSERT INTO token_usage (day, person, room, prompt_tokens, completion_tokens, turns,"
    " estimated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, person, room) DO UPDATE SET"
    " prompt_tokens = token_usage.prompt_tokens + excluded.prompt_tokens,"
    " completion_tokens = token_usage.completion_tokens + excluded.completion_tokens,"
    " turns = token_usage.turns + excluded.turns,"
)
# Once estimated, a row stays marked: SQLite's two-argument max is PostgreSQL's greatest.
_ADD: dict[Dialect, str] = {
    "sqlite": _ADD_ROW + " estimated = max(token_usage.estimated, excluded.estimated)",
    "postgres": _ADD_ROW + " estimated = greatest(token_usage.estimated, excluded.estimated)",
}
_SUMS = (
    "coalesce(sum(prompt_tokens), 0) AS prompt, coalesce(sum(completion_tokens), 0)"
    " AS completion, coalesce(sum(turns), 0) AS turns, coalesce(max(estimated), 0) AS estimated"
)


class Usage(Aggregate):
    async def record_usage(self, day: date, person: str, room: str, count: TokenCount) -> None:
        """Add one turn's (or one run's) tokens to the person's row in that room that day."""
        row = (
            day.isoformat(),
            person,
            room,
            count.prompt,
            count.completion,
            count.turns,
            int(count.estimated),
        )

        def add(tx: Tx) -> None:
            tx.execute(_ADD[tx.dialect], row)

        await self._engine.apply(add)

    async def tokens_of_person(self, day: date, person: str) -> TokenCount:
        """A person's tokens that day, over every room."""
        return await self._sum(day, "AND person = ?", (person,))

    async def tokens_of_room(self, day: date, room: str) -> TokenCount:
        """A room's tokens that day, whoever used them."""
        return await self._sum(day, "AND room = ?", (room,))

    async def usage_of_day(self, day: date, top: int = 10) -> UsageSummary:
        """That day's tokens, and the ``top`` people and rooms that used the most."""
        return UsageSummary(
            await self._sum(day),
            await self._biggest(day, "person", top),
            await self._biggest(day, "room", top),
        )

    async def _sum(self, day: date, where: str = "", params: tuple[str, ...] = ()) -> TokenCount:
        row = await self._engine.read_one(
            f"SELECT {_SUMS} FROM token_usage WHERE day = ? {where}",  # noqa: S608 - fixed text
            (day.isoformat(), *params),
        )
        return TokenCount() if row is None else _count(row)

    async def _biggest(self, day: date, key: str, top: int) -> tuple[tuple[str, TokenCount], ...]:
        rows = await self._engine.read(
            f"SELECT {key} AS name, {_SUMS} FROM token_usage WHERE day = ?"  # noqa: S608 - fixed text
            f" GROUP BY {key} ORDER BY sum(prompt_tokens + completion_tokens) DESC, {key}"
            " LIMIT ?",
            (day.isoformat(), top),
        )
        return tuple((str(row["name"]), _count(row)) for row in rows)


def _count(row: Row) -> TokenCount:
    # PostgreSQL's sum of a bigint is a numeric: every figure back to a plain int.
    return TokenCount(
        prompt=int(row["prompt"]),
        completion=int(row["completion"]),
        turns=int(row["turns"]),
        estimated=bool(row["estimated"]),
    )
