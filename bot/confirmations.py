"""Pending actions: park a dangerous call, decide whose answer counts, move it through its states.

A pending action is exactly one tool call with its canonical arguments, waiting for a
human. Only code decides what was confirmed (never the model): the requester's answer in
that room, written after the request, before the expiry. Every state change is a
compare-and-set in the store, so a call runs at most once however many yeses arrive
(A05-A10). Executing the call and resuming the turn belong to ``handlers/approvals.py``.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import structlog

from bot.clock import Clock
from bot.config import Approver, ConfirmSettings, Role
from bot.errors import StoreError
from bot.store import NewPendingAction, PendingAction, Store
from bot.talk.events import message_key

log = structlog.get_logger(__name__)

# No O/0, I/1: a code is read off a screen and typed back.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 5
MAX_CODE_TRIES = 8
INTERRUPTED = "interrupted: the bot stopped while this action ran; it was not run again"


@dataclass(frozen=True)
class PendingCall:
    """A call waiting for a human: exactly this tool with exactly these canonical arguments.

    The agent loop pauses on these (``NeedsConfirmation.calls``, kept in ``TurnState``
    under these field names); ``request`` parks each as a pending action."""

    call_id: str
    tool_name: str
    args_json: str
    approver: Approver


@dataclass(frozen=True)
class Requester:
    """Who asked, where, and which message started the turn (answers must come later)."""

    actor_id: str
    name: str
    room: str
    message_id: str


class Verdict(StrEnum):
    OK = "ok"
    NONE_OPEN = "none_open"  # nothing waits for an answer here
    AMBIGUOUS = "ambiguous"  # several wait: the person must say which (yes CODE)
    NOT_REQUESTER = "not_requester"  # someone else's action (A05)
    EXPIRED = "expired"  # too late (A09)
    TOO_EARLY = "too_early"  # written before the request (A07)
    ALREADY_DECIDED = "already_decided"  # another answer got there first (A08)


@dataclass(frozen=True)
class Match:
    """Which action an answer is about, and whether it may decide it."""

    verdict: Verdict
    action: PendingAction | None = None
    candidates: tuple[PendingAction, ...] = ()


def args_hash(args_json: str) -> str:
    return hashlib.sha256(args_json.encode("utf-8")).hexdigest()


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def is_later(message_id: str, after_message_id: str) -> bool:
    """Talk message ids grow; an answer must be newer than the message that asked (A07).

    Ids that are not numbers (the local console) only need to differ.
    """
    if not after_message_id:
        return True
    if message_id.isdigit() and after_message_id.isdigit():
        return int(message_id) > int(after_message_id)
    return message_id != after_message_id


def codes_in(text: str, actions: Sequence[PendingAction]) -> list[PendingAction]:
    """The actions whose code appears in a text (a prompt being replied or reacted to)."""
    upper = text.upper()
    return [action for action in actions if action.code in upper]


class Confirmations:
    """The rules of DESIGN.md §5 over the store's pending actions."""

    def __init__(self, store: Store, clock: Clock, settings: ConfirmSettings) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        # Rooms where the last look found nothing waiting and nothing was requested since;
        # only ever an answer for this process's own requests (one store, no replicas).
        self._none_open: set[str] = set()
        self._requested: dict[str, int] = {}  # room -> requests begun and ended: a race

    def reconfigure(self, settings: ConfirmSettings) -> None:
        self._settings = settings

    # -- asking ----------------------------------------------------------------------

    async def request(
        self, requester: Requester, calls: Sequence[PendingCall], state_json: str
    ) -> list[PendingAction]:
        """Park each call of one paused turn as its own pending action, with its own code."""
        turn_id = uuid.uuid4().hex
        expires_at = self._clock.now() + self._settings.ttl_s
        self._changed(requester.room)
        try:
            return await self._create(requester, calls, state_json, turn_id, expires_at)
        finally:
            # A look at the room that began before the commit saw nothing: the count
            # changed under it, so it does not mark the room.
            self._changed(requester.room)

    def _changed(self, room: str) -> None:
        self._requested[room] = self._requested.get(room, 0) + 1
        self._none_open.discard(room)

    async def _create(
        self,
        requester: Requester,
        calls: Sequence[PendingCall],
        state_json: str,
        turn_id: str,
        expires_at: float,
    ) -> list[PendingAction]:
        for _ in range(MAX_CODE_TRIES):
            codes = _distinct_codes(len(calls))
            rows = [
                NewPendingAction(
                    code=code,
                    turn_id=turn_id,
                    call_id=call.call_id,
                    room=requester.room,
                    requester=requester.actor_id,
                    requester_name=requester.name,
                    tool=call.tool_name,
                    args_json=call.args_json,
                    args_hash=args_hash(call.args_json),
                    approver=call.approver,
                    state_json=state_json,
                    after_message_id=requester.message_id,
                    expires_at=expires_at,
                )
                for code, call in zip(codes, calls, strict=True)
            ]
            created = await self._store.create_pending(rows)
            if created is not None:
                for action in created:
                    await self._audit(action, "requested", requester.actor_id, "pending")
                return created
        raise StoreError("could not find a free confirmation code")

    async def set_prompt(self, action: PendingAction, prompt_text: str) -> None:
        """Remember the exact prompt posted, to recognise it when it is reacted to."""
        await self._store.set_pending_prompt(action.id, prompt_text)
        await self._audit(action, "prompted", action.requester, "pending")

    async def prompted(self, action: PendingAction) -> None:
        """The prompt's post was tried: a crash after this does not post it again."""
        await self._store.mark_prompted(action.id)

    # -- finding what an answer is about -----------------------------------------------

    async def written_by_a_person(self, room: str, message_id: str) -> bool:
        """True when Talk delivered this message to us: the bot's own never come back, so
        it is a person's (a copy of a prompt, say), whatever its text (#13.7)."""
        keys = [message_key(kind, room, message_id) for kind in ("Create", "Activity")]
        return await self._store.seen_any(keys)

    async def open_in_room(self, room: str) -> list[PendingAction]:
        """Actions waiting in a room, including ones expired less than a TTL ago.

        Those stay visible so a late yes is told it expired (A09); older ones are
        marked expired here, lazily.
        """
        now = self._clock.now()
        requested = self._requested.get(room, 0)
        waiting = []
        for action in await self._store.open_pending(room):
            if action.expires_at + self._settings.ttl_s <= now:
                await self.expire(action)
            else:
                waiting.append(action)
        if waiting or self._requested.get(room, 0) != requested:
            self._none_open.discard(room)
        else:
            self._none_open.add(room)
        return waiting

    def known_none_open(self, room: str) -> bool:
        """Sure that nothing waits in ``room`` without asking the store: the last look
        found nothing and nothing was requested since. An action only ever leaves the
        waiting state, and every one is requested here, as long as this process is the
        store's only writer (the caller's to know: with replicas, it is not)."""
        return room in self._none_open

    async def list_open(self) -> list[PendingAction]:
        """Every unfinished action in every room (!pending): expired ones are left out,
        and marked expired once their grace is over, as ``open_in_room`` does (within it
        a late yes is still told the action expired, A09)."""
        await self.expire_stale()
        return await self.unfinished()

    async def unfinished(self) -> list[PendingAction]:
        """Every action waiting or running, expired ones left out; marks nothing."""
        return [
            action
            for action in await self._store.list_open_pending()
            if self.shown_status(action) != "expired"
        ]

    async def of_message(self, room: str, message_id: str) -> list[PendingAction]:
        """The actions a turn paused on after this message, whatever became of them."""
        return await self._store.pending_of_message(room, message_id)

    async def expire_stale(self) -> int:
        """Housekeeping: mark expired every action that waited past its expiry and the
        grace after it (``open_in_room``'s rule), though nobody looked at its room since
        (a prompt left unanswered in a room that fell silent). Until then it keeps its
        paused turn, which the purge of decided actions only takes once it is decided.
        How many it marked."""
        graced = self._clock.now() - self._settings.ttl_s
        marked = 0
        for action in await self._store.pending_expired_before(graced):
            if await self.expire(action):
                marked += 1
        return marked

    async def by_code(self, code: str) -> PendingAction | None:
        return await self._store.pending_by_code(code.strip().upper())

    def is_expired(self, action: PendingAction) -> bool:
        return action.expires_at <= self._clock.now()

    def shown_status(self, action: PendingAction) -> str:
        """Its status as the admin commands show it: "expired" once past its expiry,
        though not yet marked so (within the grace a late yes is still told, A09)."""
        return (
            "expired" if action.status == "pending" and self.is_expired(action) else action.status
        )

    def match_answer(
        self,
        waiting: Sequence[PendingAction],
        *,
        actor_id: str,
        message_id: str,
        code: str | None = None,
        replied_text: str | None = None,
    ) -> Match:
        """Which waiting action a yes/no (or a reaction) decides; pure, no I/O."""
        candidates = _candidates(waiting, code, replied_text)
        if not candidates:
            return Match(Verdict.NONE_OPEN)
        mine = [action for action in candidates if action.requester == actor_id]
        if not mine:
            return Match(Verdict.NOT_REQUESTER, candidates[0], tuple(candidates))
        if len(mine) > 1:
            return Match(Verdict.AMBIGUOUS, None, tuple(mine))
        action = mine[0]
        if self.is_expired(action):
            return Match(Verdict.EXPIRED, action)
        if not is_later(message_id, action.after_message_id):
            return Match(Verdict.TOO_EARLY, action)
        return Match(Verdict.OK, action)

    @staticmethod
    def requester_may_approve(action: PendingAction, role: Role) -> bool:
        """The approver policy of the tool: "admin" wants an admin, even for their own."""
        return action.approver != "admin" or role == "admin"

    @staticmethod
    def admin_may_approve(action: PendingAction) -> bool:
        """Whether ``!approve`` by an admin may stand in for the requester."""
        return action.approver in ("admin", "either")

    # -- deciding (compare-and-set) ------------------------------------------------------

    async def approve(self, action: PendingAction, *, by: str) -> Verdict:
        """pending -> approved, only before the expiry; OK for exactly one caller."""
        now = self._clock.now()
        if await self._store.transition_pending(
            action.id, "pending", "approved", decided_by=by, unexpired_at=now
        ):
            await self._audit(action, "approved", by, "approved")
            return Verdict.OK
        current = await self._expire_if_waiting(action)
        if current.status == "expired":
            return Verdict.EXPIRED
        return Verdict.ALREADY_DECIDED

    async def deny(self, action: PendingAction, *, by: str) -> bool:
        """pending -> denied (a no-word, a 👎, or an admin's cancel), only before the
        expiry, like a yes: an expired action's turn is never resumed (A09)."""
        if await self._store.transition_pending(
            action.id, "pending", "denied", decided_by=by, unexpired_at=self._clock.now()
        ):
            await self._audit(action, "denied", by, "denied")
            return True
        await self._expire_if_waiting(action)
        return False

    async def current(self, action: PendingAction) -> PendingAction:
        """The action as the store has it now (another answer may have decided it)."""
        return await self._store.get_pending(action.id) or action

    async def _expire_if_waiting(self, action: PendingAction) -> PendingAction:
        """After a decision that did not take: the action now, marked expired if it still
        waits (so the decision came too late)."""
        current = await self.current(action)
        if current.status == "pending" and await self.expire(current):
            return replace(current, status="expired")
        return current

    async def cancel_for_requester(self, room: str, requester: str) -> list[PendingAction]:
        """The requester moved on: every action of theirs waiting in the room is cancelled."""
        cancelled = []
        for action in await self._store.open_pending(room):
            if action.requester != requester:
                continue
            if self.is_expired(action):
                await self.expire(action)
            elif await self._store.transition_pending(
                action.id,
                "pending",
                "cancelled",
                decided_by=requester,
                unexpired_at=self._clock.now(),
            ):
                await self._audit(action, "cancelled", requester, "cancelled")
                cancelled.append(action)
            else:
                await self._expire_if_waiting(action)
        return cancelled

    async def withdraw(self, action: PendingAction, *, reason: str) -> bool:
        """pending -> cancelled before anyone could answer (its prompt cannot be shown)."""
        if await self._store.transition_pending(action.id, "pending", "cancelled"):
            await self._audit(action, "refused", "", "cancelled", reason)
            return True
        return False

    async def expire(self, action: PendingAction) -> bool:
        if await self._store.transition_pending(action.id, "pending", "expired"):
            await self._audit(action, "expired", "", "expired")
            return True
        return False

    async def start(self, action: PendingAction) -> bool:
        """approved -> running, just before the call; a crash now leaves it running (A10)."""
        if await self._store.transition_pending(action.id, "approved", "running"):
            await self._audit(action, "started", action.decided_by, "running")
            return True
        return False

    async def finish(self, action: PendingAction, *, ok: bool, result_text: str) -> None:
        status = "done" if ok else "failed"
        await self._store.transition_pending(action.id, "running", status, result_text=result_text)
        await self._audit(action, "finished", action.requester, status)

    async def fail(self, action: PendingAction, *, from_status: str, reason: str) -> bool:
        """An action that cannot run after all (its stored state is unreadable...)."""
        if await self._store.transition_pending(
            action.id, from_status, "failed", result_text=reason
        ):
            await self._audit(action, "failed", "", "failed", reason)
            return True
        return False

    async def claim_resume(self, turn_id: str) -> list[PendingAction] | None:
        """Every action of the turn, once, when none waits any more: resume the turn."""
        return await self._store.claim_turn_resume(turn_id)

    async def recover_interrupted(self, alive: Sequence[str] = ()) -> list[PendingAction]:
        """Approved or running on a replica that is gone (at start: the last process)
        means it died there; fail, never re-run. ``alive``: replicas still at work."""
        failed = []
        for action in await self._store.interrupted_pending(alive):
            if await self.fail(action, from_status=action.status, reason=INTERRUPTED):
                log.warning(
                    "confirm.interrupted", code=action.code, tool=action.tool, room=action.room
                )
                failed.append(action)
        return failed

    # -- audit -----------------------------------------------------------------------

    async def _audit(
        self, action: PendingAction, step: str, actor: str, outcome: str, detail: str = ""
    ) -> None:
        event = f"confirm.{step}"
        await self._store.audit(
            actor=actor or action.requester,
            room=action.room,
            action=event,
            tool=action.tool,
            args_hash=action.args_hash,
            outcome=outcome,
            detail=f"code={action.code} {detail}".strip(),
        )
        log.info(
            event,
            code=action.code,
            tool=action.tool,
            args_hash=action.args_hash[:16],
            actor=actor or action.requester,
            requester=action.requester,
            room=action.room,
            outcome=outcome,
        )


def _distinct_codes(count: int) -> list[str]:
    codes: list[str] = []
    while len(codes) < count:
        code = new_code()
        if code not in codes:
            codes.append(code)
    return codes


def _candidates(
    waiting: Sequence[PendingAction], code: str | None, replied_text: str | None
) -> list[PendingAction]:
    if code:
        return [action for action in waiting if action.code == code.upper()]
    if replied_text:
        chosen = codes_in(replied_text, waiting)
        if chosen:
            return chosen
    return list(waiting)
