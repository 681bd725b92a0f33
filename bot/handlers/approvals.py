"""Approvals: what happens to a turn that needs a yes, shared by the confirm handler (the
requester's answers) and the admin commands (``!approve``, ``!cancel``, ``!restart``).

A turn's outcome is settled here: an answer is posted, a pause is parked as pending
actions with their prompts. An approved action runs exactly its stored call, once, and
the turn resumes; its outcome is settled the same way. What was running on a replica that
is gone is failed and its requester told."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from bot import replies
from bot.access import Access
from bot.agent import prompts
from bot.agent.history import History
from bot.agent.loop import NeedsConfirmation, TurnOutcome, TurnState
from bot.config import Role
from bot.confirmations import Confirmations, PendingCall, Requester, Verdict, args_hash
from bot.crashpoints import crash_point
from bot.errors import ToolError
from bot.handlers.chat import ChatHandler
from bot.routing import PendingRef
from bot.store import PendingAction
from bot.talk.events import Actor, Event, Message, Room
from bot.tools import Toolbox, ToolContext, ToolResult, canonical_json

log = structlog.get_logger(__name__)

STATE_UNREADABLE = "the paused turn could not be read back; the action was not run"
# The call id of a confirmed command, which has no model turn around it.
COMMAND_CALL_ID = "command"


class Approvals:
    """Settle a turn's outcome, park and prompt its calls, run what was approved, resume."""

    def __init__(
        self,
        *,
        confirmations: Confirmations,
        chat: ChatHandler,
        toolbox: Callable[[], Toolbox],  # the current one: !reload may replace it
        access: Access,
        history: History,
        timezone: Callable[[], str],  # [chat] timezone, for the expiry in a prompt
        command_prefix: Callable[[], str],
    ) -> None:
        self._confirmations = confirmations
        self._chat = chat
        self._toolbox = toolbox
        self._access = access
        self._history = history
        self._timezone = timezone
        self._prefix = command_prefix

    async def expire_stale(self) -> int:
        """Housekeeping: actions left waiting past their expiry are marked expired."""
        return await self._confirmations.expire_stale()

    def none_waiting(self, room: str) -> bool:
        """Sure, without the store, that no prompt waits in ``room`` (one process only)."""
        return self._confirmations.known_none_open(room)

    async def pending_in_room(self, room: str) -> tuple[PendingRef, ...]:
        """What routing needs to recognise answers in a room (the router's lookup)."""
        waiting = await self._confirmations.open_in_room(room)
        return tuple(
            PendingRef(code=action.code, requester=action.requester, prompt=action.prompt_text)
            for action in waiting
        )

    async def settle(self, event: Event, outcome: TurnOutcome | None) -> None:
        """Act on what a turn returned: answer in the room, or ask for a yes first.
        None: the turn did not run (a quota stopped it, and the person was told)."""
        if isinstance(outcome, NeedsConfirmation):
            await self.ask(event, outcome)
        elif outcome is not None:
            await self._chat.answer(event, outcome)

    # -- asking ------------------------------------------------------------------------

    async def ask(self, event: Event, needs: NeedsConfirmation) -> None:
        """The turn paused on dangerous calls: store one action per call, post its prompt."""
        requester = Requester(
            actor_id=event.actor.id,
            name=event.actor.name or event.actor.uid,
            room=event.room.token,
            message_id=event.message.id if event.message is not None else "",
        )
        actions = await self._confirmations.request(requester, needs.calls, needs.state.to_json())
        for action in actions:
            text = replies.defuse_mentions(self.prompt_for(action, self._timezone()))
            if len(text) > replies.MESSAGE_LIMIT:
                await self._withdraw_unshowable(event, action, len(text))
                continue
            await self.post_prompt(event, action, text)
            # The prompt quotes the model's arguments: as trusted as the turn that made them.
            state = needs.state
            await self._history.record_reply(
                event.room.token, text, untrusted=state.tainted, private=state.private
            )

    async def post_prompt(self, event: Event, action: PendingAction, text: str) -> None:
        """Record the exact prompt (reactions are matched on it), post it, mark it out."""
        await self._confirmations.set_prompt(action, text)
        await self._chat.say(event, text)
        await self._confirmations.prompted(action)

    async def tell_expired(self, event: Event, action: PendingAction) -> None:
        """Instead of a prompt a crash kept from being posted, now too late to answer:
        the requester is told the request expired and to ask again; marked as told."""
        await self._chat.say(event, replies.confirmation_expired(action.code))
        await self._confirmations.prompted(action)

    def prompt_for(self, action: PendingAction, timezone: str) -> str:
        return replies.confirmation_prompt(
            tool=action.tool,
            args=_args_for_display(action.args_json),
            args_hash=action.args_hash,
            code=action.code,
            requester=action.requester_name or action.requester,
            expires=_clock_time(action.expires_at, timezone),
        )

    async def _withdraw_unshowable(self, event: Event, action: PendingAction, size: int) -> None:
        """A prompt must show every argument in full (§5): too large for one message, the
        call is refused rather than abbreviated; the rest of its turn still waits."""
        reason = f"the prompt would be {size} characters, more than one message holds"
        await self._confirmations.withdraw(action, reason=reason)
        note = replies.confirmation_too_large(action.tool, size)
        await self._chat.say(event, note)
        await self._history.record_reply(action.room, note, untrusted=False)  # our own words

    async def ask_for_command(self, event: Event, tool_name: str) -> None:
        """A command (not a model turn) that needs a yes first, like ``!restart``."""
        tool = self._toolbox().get(tool_name)
        if tool is None:
            await self._chat.say(event, replies.apology())
            return
        call = PendingCall(
            call_id=COMMAND_CALL_ID, tool_name=tool_name, args_json="{}", approver=tool.approver
        )
        await self.ask(
            event, NeedsConfirmation(text=None, calls=(call,), state=TurnState(messages=()))
        )

    # -- the admin's side --------------------------------------------------------------

    async def approve_by_admin(self, code: str, admin_id: str) -> str:
        """``!approve CODE``: run the action for its requester, when its policy allows."""
        action = await self._confirmations.by_code(code)
        if action is None:
            return replies.admin_no_action(code.upper())
        if action.status != "pending":
            return replies.admin_action_not_waiting(action.code, action.status)
        if not self._confirmations.admin_may_approve(action):
            return replies.admin_requester_only(action.code)
        verdict = await self._confirmations.approve(action, by=admin_id)
        if verdict is Verdict.EXPIRED:
            return replies.confirmation_expired(action.code)
        if verdict is not Verdict.OK:
            return replies.admin_action_not_waiting(action.code, "already decided")
        role = self._access.role_of(action.requester)
        ok = await self.run(_origin_event(action), role, action)
        return replies.admin_approved(action.code, action.tool, action.room, ok=ok)

    async def cancel_by_admin(self, code: str, admin_id: str) -> str:
        """``!cancel CODE``: deny a waiting action; its turn resumes without it."""
        action = await self._confirmations.by_code(code)
        if action is None:
            return replies.admin_no_action(code.upper())
        # Past its expiry deny refuses and marks it expired: its turn is not resumed.
        if not await self._confirmations.deny(action, by=admin_id):
            current = await self._confirmations.current(action)
            if current.status == "expired":
                return replies.confirmation_expired(action.code)
            return replies.admin_action_not_waiting(action.code, current.status)
        role = self._access.role_of(action.requester)
        await self.after_decision(_origin_event(action), role, action, "denied")
        return replies.admin_cancelled(action.code)

    async def unfinished(self) -> list[PendingAction]:
        """Every action waiting or running, expired ones left out (!status counts them)."""
        return await self._confirmations.unfinished()

    async def listing(self) -> str:
        """``!pending``: every unfinished action in every room, oldest first, abbreviated."""
        timezone = self._timezone()
        lines = [
            replies.pending_line(
                action.code,
                tool=action.tool,
                room=action.room,
                requester=action.requester,
                status=action.status,
                expires=_clock_time(action.expires_at, timezone),
                args=_args_for_display(action.args_json),
            )
            for action in await self._confirmations.list_open()
        ]
        return replies.pending_list(lines, prefix=self._prefix())

    async def details(self, code: str) -> str:
        """``!pending CODE``: one action with every argument in full, escaped like its prompt."""
        action = await self._confirmations.by_code(code)
        if action is None:
            return replies.admin_no_action(code.strip().upper())
        text = replies.pending_call(
            action.code,
            tool=action.tool,
            room=action.room,
            requester=action.requester,
            status=self._confirmations.shown_status(action),
            expires=_clock_time(action.expires_at, self._timezone()),
            args=_args_for_display(action.args_json),
            args_hash=action.args_hash,
        )
        if len(text) > replies.MESSAGE_LIMIT:
            return replies.pending_call_too_large(action.code, len(text))
        return text

    async def recover_interrupted(self, alive: Sequence[str] = ()) -> None:
        """Fail what was running on a replica that is gone and tell the requester: at
        start, before the dispatcher (the last process), and with replicas now and then."""
        for action in await self._confirmations.recover_interrupted(alive):
            text = replies.confirmation_interrupted(
                action.tool, action.code, action.requester_name or action.requester
            )
            await self._chat.say(_origin_event(action), text)

    # -- running and resuming ----------------------------------------------------------

    async def run(self, event: Event, role: Role, action: PendingAction) -> bool:
        """approved -> running -> done|failed, then resume the turn; True when the tool ran."""
        state = _state_of(action)
        if state is None:
            await self._confirmations.fail(action, from_status="approved", reason=STATE_UNREADABLE)
            await self._chat.say(event, replies.apology())
            return False
        if not await self._confirmations.start(action):
            return False
        crash_point("tool_running")
        ctx = self._chat.context_for(event, role, tainted=state.tainted)
        result = await self._execute(action, ctx)
        crash_point("tool_ran")
        await self._confirmations.finish(action, ok=result.ok, result_text=result.text)
        await self.after_decision(event, role, action, "done" if result.ok else "failed")
        return result.ok

    async def _execute(self, action: PendingAction, ctx: ToolContext) -> ToolResult:
        """Exactly the stored call (A06); the toolbox checks the role again now (A01)."""
        if args_hash(action.args_json) != action.args_hash:
            return ToolResult("the stored arguments were altered; refused", ok=False)
        try:
            args = self._toolbox().validate(action.tool, action.args_json)
        except ToolError as exc:
            return ToolResult(str(exc), ok=False)
        if canonical_json(args) != action.args_json:
            return ToolResult("the stored arguments no longer validate unchanged", ok=False)
        return await self._toolbox().execute(action.tool, args, ctx, confirmed=True)

    async def after_decision(
        self, event: Event, role: Role, action: PendingAction, outcome: str
    ) -> None:
        """Resume the turn once nothing of it waits; else say what happened and what waits."""
        decided = await self._confirmations.claim_resume(action.turn_id)
        if decided is None:
            waiting = [
                a.code
                for a in await self._confirmations.open_in_room(action.room)
                if a.turn_id == action.turn_id
            ]
            if waiting:
                text = replies.confirmation_step(action.tool, action.code, outcome, waiting)
                await self._chat.say(event, text)
            return
        state = _state_of(decided[0])
        if state is None:
            await self._chat.say(event, replies.apology())
            return
        if not state.messages:  # a confirmed command, not a model turn: report the outcome
            for done in decided:
                await self._chat.say(
                    event, replies.command_outcome(done.tool, done.status, done.result_text)
                )
            return
        ctx = self._chat.context_for(event, role, tainted=state.tainted)
        await self.settle(event, await self._chat.resume(event, ctx, state, _results(decided)))


def _results(decided: list[PendingAction]) -> dict[str, str]:
    """What the model is told per call; denied and cancelled calls are left out (not run)."""
    results = {}
    for action in decided:
        if action.status in ("done", "failed"):
            results[action.call_id] = prompts.confirmed_result(
                action.result_text, ok=action.status == "done"
            )
        elif action.status == "expired":
            results[action.call_id] = prompts.CONFIRMATION_EXPIRED
    return results


def _state_of(action: PendingAction) -> TurnState | None:
    try:
        return TurnState.from_json(action.state_json)
    except ValueError:
        log.exception("confirm.state_unreadable", code=action.code)
        return None


def _origin_event(action: PendingAction) -> Event:
    """The requester's request again (admin approval, restart): answers reply to it."""
    request = Message(id=action.after_message_id) if action.after_message_id else None
    return Event(
        type="Create",
        actor=Actor(id=action.requester, name=action.requester_name),
        room=Room(token=action.room),
        message=request,
    )


def _args_for_display(args_json: str) -> dict[str, Any]:
    try:
        value = json.loads(args_json)
    except ValueError:
        return {"arguments": args_json}
    return value if isinstance(value, dict) else {"arguments": value}


def _clock_time(epoch: float, timezone: str) -> str:
    when = datetime.fromtimestamp(epoch, ZoneInfo(timezone))
    return when.strftime("%H:%M %Z (%Y-%m-%d)")
