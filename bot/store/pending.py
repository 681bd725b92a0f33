"""Pending actions: each dangerous call parked until its requester's own "yes" (A08).

Every change of status is a compare-and-set, so an action runs once however many answers
arrive at once, on however many replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.store.aggregate import Aggregate
from bot.store.engine import Conflict, Tx
from bot.store.inbox import BODY_RETENTION_S, PURGE_CHUNK, ROW_RETENTION_S
from bot.store.records import OPEN_ACTION_STATUSES, NewPendingAction, PendingAction

# A decided action's paused turn is dead once resumed or ended: kept this long after its
# last change of status, as the inbox keeps a body (#19); the row as long as an inbox row.
TURN_RETENTION_S = BODY_RETENTION_S
ACTION_RETENTION_S = ROW_RETENTION_S

# The open statuses as an SQL list, from the one definition (constants, never input).
_OPEN = "(" + ", ".join(f"'{status}'" for status in OPEN_ACTION_STATUSES) + ")"

_COLUMNS = (
    "id, code, turn_id, call_id, room, requester, requester_name, tool, args_json, args_hash,"
    " approver, state_json, after_message_id, prompt_text, created_at, expires_at, status,"
    " decided_by, result_text, updated_at, prompted"
)


class Pending(Aggregate):
    async def create_pending(
        self, actions: Sequence[NewPendingAction]
    ) -> list[PendingAction] | None:
        """Store the pending actions of one turn together; None if a code is already open."""
        now = self._clock.now()

        def insert(tx: Tx) -> list[int] | None:
            try:
                with tx.savepoint():
                    return [_insert(tx, action, now) for action in actions]
            except Conflict:
                return None

        ids = await self._engine.apply(insert)
        if ids is None:
            return None
        return [action for action_id in ids if (action := await self.get_pending(action_id))]

    async def get_pending(self, action_id: int) -> PendingAction | None:
        found = await self._pending_where("id = ?", (action_id,))
        return found[0] if found else None

    async def pending_by_code(self, code: str) -> PendingAction | None:
        """The action with this code: the open one, else the latest that had it."""
        found = await self._pending_where(
            f"code = ? ORDER BY status IN {_OPEN} DESC, id DESC LIMIT 1",
            (code.upper(),),
        )
        return found[0] if found else None

    async def open_pending(self, room: str) -> list[PendingAction]:
        """Actions in a room still waiting for an answer (expired or not), oldest first."""
        return await self._pending_where("room = ? AND status = 'pending' ORDER BY id", (room,))

    async def list_open_pending(self) -> list[PendingAction]:
        """Every action not finished yet, in every room, oldest first (for !pending)."""
        return await self._pending_where(f"status IN {_OPEN} ORDER BY id", ())

    async def pending_of_message(self, room: str, message_id: str) -> list[PendingAction]:
        """Every action a turn paused on after this message of the room, whatever its
        status, oldest first (the request is redone after a crash)."""
        return await self._pending_where(
            "room = ? AND after_message_id = ? ORDER BY id", (room, message_id)
        )

    async def pending_expired_before(self, cutoff: float) -> list[PendingAction]:
        """Actions still waiting for an answer whose expiry is ``cutoff`` or earlier, in
        every room, oldest first (housekeeping marks them expired)."""
        return await self._pending_where(
            "status = 'pending' AND expires_at <= ? ORDER BY id", (cutoff,)
        )

    async def interrupted_pending(self, alive: Sequence[str] = ()) -> list[PendingAction]:
        """Actions approved or running on a replica that is gone (never re-run, A10): not
        this one and not one in ``alive``."""
        keep = [*alive, self._replica] if self._replica else [*alive]
        where = "status IN ('approved', 'running')"
        if keep:
            where += f" AND runner NOT IN ({', '.join('?' for _ in keep)})"
        return await self._pending_where(f"{where} ORDER BY id", keep)

    async def set_pending_prompt(self, action_id: int, prompt_text: str) -> None:
        await self._engine.change(
            "UPDATE pending_actions SET prompt_text = ? WHERE id = ?", (prompt_text, action_id)
        )

    async def mark_prompted(self, action_id: int) -> None:
        """Its prompt was posted (or tried): a resumed turn does not post it again."""
        await self._engine.change(
            "UPDATE pending_actions SET prompted = 1 WHERE id = ?", (action_id,)
        )

    async def transition_pending(
        self,
        action_id: int,
        from_status: str,
        to_status: str,
        *,
        decided_by: str | None = None,
        result_text: str | None = None,
        unexpired_at: float | None = None,
    ) -> bool:
        """Compare-and-set the status; False when it was not ``from_status`` (or expired)."""
        sets = ["status = ?", "updated_at = ?"]
        params: list[Any] = [to_status, self._clock.now()]
        if to_status in ("approved", "running"):
            sets.append("runner = ?")  # whose it is now: only its death interrupts it
            params.append(self._replica)
        if decided_by is not None:
            sets.append("decided_by = ?")
            params.append(decided_by)
        if result_text is not None:
            sets.append("result_text = ?")
            params.append(result_text)
        sql = f"UPDATE pending_actions SET {', '.join(sets)} WHERE id = ? AND status = ?"  # noqa: S608 - fixed fragments, values bound
        params += [action_id, from_status]
        if unexpired_at is not None:
            sql += " AND expires_at > ?"
            params.append(unexpired_at)
        return await self._engine.change(sql, params) == 1

    async def purge_pending(
        self,
        *,
        turns_older_than_s: float = TURN_RETENTION_S,
        rows_older_than_s: float = ACTION_RETENTION_S,
    ) -> None:
        """Housekeeping: a decided action keeps its paused turn (``state_json``: the turn's
        messages, often tens of KB) only until that turn was resumed or ended, yet it stayed
        in the store for good. It goes ``turns_older_than_s`` after the last change of
        status of its turn's actions; the row goes after ``rows_older_than_s`` (a late answer
        to its code is then one to an unknown code). Open actions are never touched, nor
        any action of a turn that still waits on another of its calls."""
        now = self._clock.now()
        # Every call its turn paused on decided, the last of them before the cutoff: the
        # turn resumes from the first action's paused turn, with each one's result, once
        # the last is decided (an action's own row is among the others).
        done = (
            f"NOT EXISTS (SELECT 1 FROM pending_actions AS other"  # noqa: S608 - constants only
            " WHERE other.turn_id = pending_actions.turn_id"
            f" AND (other.status IN {_OPEN} OR other.updated_at >= ?))"
        )

        def forget_turns(tx: Tx) -> int:
            return tx.execute(
                "UPDATE pending_actions SET state_json = '' WHERE id IN (SELECT id FROM"  # noqa: S608 - fixed fragments, values bound
                f" pending_actions WHERE {done} AND state_json != '' ORDER BY id LIMIT ?)",
                (now - turns_older_than_s, PURGE_CHUNK),
            ).rowcount

        def delete_rows(tx: Tx) -> int:
            return tx.execute(
                "DELETE FROM pending_actions WHERE id IN (SELECT id FROM pending_actions"  # noqa: S608 - fixed fragments, values bound
                f" WHERE {done} ORDER BY id LIMIT ?)",
                (now - rows_older_than_s, PURGE_CHUNK),
            ).rowcount

        for step in (forget_turns, delete_rows):  # in chunks, each its own commit
            while await self._engine.apply(step) == PURGE_CHUNK:
                pass

    async def claim_turn_resume(self, turn_id: str) -> list[PendingAction] | None:
        """All actions of a turn, once, when none is open any more; else None."""

        def claim(tx: Tx) -> bool:
            [row] = tx.execute(
                "SELECT count(*) AS n FROM pending_actions WHERE turn_id = ?"  # noqa: S608 - fixed fragments, values bound
                f" AND status IN {_OPEN}",
                (turn_id,),
            ).fetchall()
            if int(row["n"]) > 0:
                return False
            claimed = tx.execute(
                "UPDATE pending_actions SET resumed = 1 WHERE turn_id = ? AND resumed = 0",
                (turn_id,),
            )
            return claimed.rowcount > 0

        if not await self._engine.apply(claim):
            return None
        return await self._pending_where("turn_id = ? ORDER BY id", (turn_id,))

    async def _pending_where(self, where: str, params: Sequence[Any]) -> list[PendingAction]:
        rows = await self._engine.read(
            f"SELECT {_COLUMNS} FROM pending_actions WHERE {where}",  # noqa: S608 - fixed fragments, values bound
            tuple(params),
        )
        return [PendingAction(**{**row, "prompted": bool(row["prompted"])}) for row in rows]


def _insert(tx: Tx, action: NewPendingAction, now: float) -> int:
    [row] = tx.execute(
        "INSERT INTO pending_actions (code, turn_id, call_id, room, requester, requester_name,"
        " tool, args_json, args_hash, approver, state_json, after_message_id, created_at,"
        " expires_at, updated_at, prompted)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) RETURNING id",
        (
            action.code,
            action.turn_id,
            action.call_id,
            action.room,
            action.requester,
            action.requester_name,
            action.tool,
            action.args_json,
            action.args_hash,
            action.approver,
            action.state_json,
            action.after_message_id,
            now,
            action.expires_at,
            now,
        ),
    ).fetchall()
    return int(row["id"])
