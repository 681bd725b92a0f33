"""The inbox: every verified webhook, stored before it is acknowledged (W04, W05)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from bot.store.aggregate import Aggregate
from bot.store.engine import Row, Tx
from bot.store.history import INSERT_HISTORY, TRIM_HISTORY, history_row
from bot.store.records import HistoryEntry, InboxItem

BODY_RETENTION_S = 14 * 24 * 3600
ROW_RETENTION_S = 180 * 24 * 3600

# A webhook waits at most this long for a commit (Talk waits inside the sender's request);
# once the store is known down, it gets one attempt only.
INTAKE_BUDGET_S = 2.0
# Rows purged per commit: housekeeping never holds the store's thread for long (#14).
PURGE_CHUNK = 500

# A message at or below its room's replay floor was accepted before and purged since:
# the row is not inserted, so the webhook is a repeat (H03). Pending, or already finished
# for an event settled on arrival (#19).
INSERT_EVENT = (
    "INSERT INTO inbox (room, dedupe_key, kind, body, received_at, status, finished_at,"
    " error) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
    " (SELECT 1 FROM replay_floor WHERE room = ? AND message_id >= ?)"
    " ON CONFLICT DO NOTHING RETURNING id"
)
_ITEM = "SELECT id, room, kind, body, received_at, attempts FROM inbox"
# The open events, in the words of the partial index inbox_open (step 10), so that both
# SQLite and PostgreSQL read that index: it holds only them.
OPEN = "status IN ('pending', 'running')"
# Kinds whose dedupe key ends in the Talk id of the message itself (not a reacted one).
_FLOORED_KINDS = ("Create", "Activity")
_RAISE_FLOOR = {
    "sqlite": "INSERT INTO replay_floor (room, message_id) VALUES (?, ?) ON CONFLICT (room)"
    " DO UPDATE SET message_id = max(message_id, excluded.message_id)",
    "postgres": "INSERT INTO replay_floor (room, message_id) VALUES (?, ?) ON CONFLICT (room)"
    " DO UPDATE SET message_id = greatest(replay_floor.message_id, excluded.message_id)",
}


def event_params(
    *,
    room: str,
    kind: str,
    body: bytes,
    random: str,
    dedupe_key: str | None,
    message_id: int | None,
    now: float,
    finished: tuple[str, str] | None = None,
) -> tuple[object, ...]:
    """INSERT_EVENT's parameters. The key is the event's ``dedupe_key`` (a replayed
    request has the same body, so the same key), or ``random:<random>`` for an event only
    its random tells apart. ``finished``: (status, error) of an event stored finished."""
    status, error = finished or ("pending", None)
    key = dedupe_key or f"random:{random}"
    ended = None if finished is None else now
    return (room, key, kind, body.decode("utf-8"), now, status, ended, error, room, message_id)


class Inbox(Aggregate):
    async def accept_event(
        self,
        *,
        room: str,
        kind: str,
        body: bytes,
        random: str,
        dedupe_key: str | None,
        message_id: int | None = None,
    ) -> int | None:
        """Store a verified webhook; None when its key was seen before (``event_params``).

        Returns once the row is committed (W04, W05). Webhooks arriving together are
        committed together: one transaction per event-loop tick, not one per webhook.
        StoreUnavailableError when the store cannot commit within INTAKE_BUDGET_S (H04).
        """
        params = event_params(
            room=room,
            kind=kind,
            body=body,
            random=random,
            dedupe_key=dedupe_key,
            message_id=message_id,
            now=self._clock.now(),
        )
        return await self._engine.apply(partial(_insert, params), budget_s=INTAKE_BUDGET_S)

    async def accept_settled(
        self,
        *,
        room: str,
        kind: str,
        body: bytes,
        random: str,
        dedupe_key: str | None,
        message_id: int | None,
        history: HistoryEntry | None,
        trim_to: int | None = None,
        dropped: str = "",
    ) -> int | None:
        """Store a verified webhook that needs nothing more than its history row (ignored
        chatter, a file kept as context): both in one commit, the event already done,
        and the room's history trimmed to its newest ``trim_to`` rows if given; with
        ``dropped`` (the reason), stored given up instead (a flooded room's turn). None
        when it is a repeat (then no history row either). The same budget and group
        commit as ``accept_event``."""
        now = self._clock.now()
        params = event_params(
            room=room,
            kind=kind,
            body=body,
            random=random,
            dedupe_key=dedupe_key,
            message_id=message_id,
            now=now,
            finished=("dropped", dropped) if dropped else ("done", ""),
        )
        remembered = None if history is None else history_row(room, history, now)

        def insert(tx: Tx) -> int | None:
            event_id = _insert(params, tx)
            if event_id is not None and remembered is not None:
                tx.execute(INSERT_HISTORY, remembered)
                if trim_to is not None:
                    tx.execute(TRIM_HISTORY, (room, room, trim_to))
            return event_id

        return await self._engine.apply(insert, budget_s=INTAKE_BUDGET_S)

    async def open_events(self) -> list[InboxItem]:
        """Everything accepted and not finished, oldest first (resumed after a restart)."""
        # "+id": without it SQLite walks the whole table in id order instead of the index
        # (its planner has no figures on how few rows are open); PostgreSQL reads it alike.
        rows = await self._engine.read(f"{_ITEM} WHERE {OPEN} ORDER BY +id")
        return [_item(row) for row in rows]

    async def open_events_in(self, room: str) -> list[InboxItem]:
        """One room's accepted events not finished, oldest first (a replica taking it up)."""
        rows = await self._engine.read(f"{_ITEM} WHERE {OPEN} AND room = ? ORDER BY id", (room,))
        return [_item(row) for row in rows]

    async def get_event(self, event_id: int) -> InboxItem | None:
        row = await self._engine.read_one(f"{_ITEM} WHERE id = ?", (event_id,))
        return None if row is None else _item(row)

    async def start_event(self, event_id: int) -> None:
        await self._engine.change(
            "UPDATE inbox SET status = 'running', attempts = attempts + 1 WHERE id = ?",
            (event_id,),
        )

    async def finish_event(self, event_id: int, status: str = "done", error: str = "") -> None:
        await self._engine.change(
            "UPDATE inbox SET status = ?, finished_at = ?, error = ? WHERE id = ?",
            (status, self._clock.now(), error, event_id),
        )

    async def finish_events(self, outcomes: Sequence[tuple[int, str, str]]) -> None:
        """Finish several events in one statement and commit: each (id, status, error).
        The dispatcher's events of one loop tick that needed no turn, and a flooded
        room's overflow ('dropped')."""
        now = self._clock.now()
        rows = [(status, now, error, event_id) for event_id, status, error in outcomes]

        def finish(tx: Tx) -> None:
            tx.executemany(
                "UPDATE inbox SET status = ?, finished_at = ?, error = ? WHERE id = ?", rows
            )

        await self._engine.apply(finish)

    async def inbox_backlog(self, *, waiting_only: bool = False) -> int:
        """Accepted events not finished; ``waiting_only``: those not started yet."""
        waiting = " AND status = 'pending'" if waiting_only else ""
        row = await self._engine.read_one(
            f"SELECT count(*) AS n FROM inbox WHERE {OPEN}{waiting}"  # noqa: S608 - fixed fragments
        )
        return 0 if row is None else int(row["n"])

    async def seen_any(self, dedupe_keys: Sequence[str]) -> bool:
        """Whether an event with one of these keys was accepted (and not yet purged)."""
        marks = ", ".join("?" for _ in dedupe_keys)
        row = await self._engine.read_one(
            f"SELECT 1 AS seen FROM inbox WHERE dedupe_key IN ({marks}) LIMIT 1",  # noqa: S608 - placeholders only
            tuple(dedupe_keys),
        )
        return row is not None

    async def event_status(self, event_id: int) -> str | None:
        row = await self._engine.read_one("SELECT status FROM inbox WHERE id = ?", (event_id,))
        return None if row is None else str(row["status"])

    async def purge(
        self,
        *,
        bodies_older_than_s: float = BODY_RETENTION_S,
        rows_older_than_s: float = ROW_RETENTION_S,
    ) -> None:
        """Housekeeping: finished events lose their body, and much later their row.

        The row (its dedupe key: room + message id, or the random) is what makes a replay a no-op,
        so it outlives the body by far (W05); before it goes, its room's replay floor
        keeps doing that (H03).
        """
        now = self._clock.now()
        bodies_before, rows_before = now - bodies_older_than_s, now - rows_older_than_s

        def empty_bodies(tx: Tx) -> int:
            # Read through inbox_bodies (step 11), in its words: only the rows that still
            # have a body, oldest first; never the months of rows emptied before.
            return tx.execute(
                "UPDATE inbox SET body = '' WHERE id IN (SELECT id FROM inbox"
                " WHERE body != '' AND received_at < ? AND status NOT IN ('pending', 'running')"
                " ORDER BY received_at LIMIT ?)",
                (bodies_before, PURGE_CHUNK),
            ).rowcount

        def delete_rows(after: int, tx: Tx) -> int | None:
            """The next PURGE_CHUNK rows after id ``after``, oldest first, by the primary
            key: the finished ones past retention go. The id to go on from; None once a
            whole chunk was too young to go (ids grow with time: the rest are younger
            still) or the table ended. One row stamped in the future by a clock set back
            later does not end it. A filter on the time instead walked every younger row
            (all of the inbox but the oldest) in the last chunk of every run."""
            rows = tx.execute(
                "SELECT id, status, received_at FROM inbox WHERE id > ? ORDER BY id LIMIT ?",
                (after, PURGE_CHUNK),
            ).fetchall()
            ids = [
                int(row["id"])
                for row in rows
                if row["status"] not in ("pending", "running") and row["received_at"] < rows_before
            ]
            if ids:
                _raise_replay_floors(tx, ids)
                tx.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i in ids])
            young = all(row["received_at"] >= rows_before for row in rows)
            return None if young or len(rows) < PURGE_CHUNK else int(rows[-1]["id"])

        # In chunks, each its own commit: webhooks arriving meanwhile are committed between
        # them instead of waiting behind one long transaction on the store's thread.
        while await self._engine.apply(empty_bodies) == PURGE_CHUNK:
            pass
        after: int | None = 0
        while after is not None:
            after = await self._engine.apply(partial(delete_rows, after))


def _insert(params: Sequence[object], tx: Tx) -> int | None:
    found = tx.execute(INSERT_EVENT, params).fetchall()
    return int(found[0]["id"]) if found else None


def _raise_replay_floors(tx: Tx, ids: Sequence[int]) -> None:
    """Before rows go, each room's floor rises to the highest message id among them: the
    row that made a replay a no-op is gone, the floor keeps doing it (H03)."""
    floors: dict[str, int] = {}
    marks = ", ".join("?" for _ in ids)
    rows = tx.execute(
        f"SELECT room, dedupe_key FROM inbox WHERE id IN ({marks})"  # noqa: S608 - placeholders only
        " AND kind IN (?, ?) AND dedupe_key NOT LIKE 'random:%' AND dedupe_key NOT LIKE 'row:%'",
        (*ids, *_FLOORED_KINDS),
    ).fetchall()
    for row in rows:
        number = str(row["dedupe_key"]).rpartition(":")[2]
        if number.isdigit():
            floors[row["room"]] = max(floors.get(row["room"], 0), int(number))
    if floors:
        tx.executemany(_RAISE_FLOOR[tx.dialect], sorted(floors.items()))


def _item(row: Row) -> InboxItem:
    return InboxItem(
        id=row["id"],
        room=row["room"],
        kind=row["kind"],
        body=str(row["body"]).encode("utf-8"),
        received_at=row["received_at"],
        attempts=row["attempts"],
    )
