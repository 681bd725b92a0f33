"""Confirmation answers: post the prompt, take yes/no/👍/👎, run the stored call, resume."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from bot import replies
from bot.access import Access
from bot.agent import prompts
from bot.agent.history import History
from bot.agent.loop import NeedsConfirmation, PendingCall, TurnState
from bot.config import Role
from bot.confirmations import (
    CallToConfirm,
    Confirmations,
    Match,
    Requester,
    Verdict,
    args_hash,
)
from bot.crashpoints import crash_point
from bot.errors import ToolError
from bot.handlers.chat import ChatHandler
from bot.routing import PendingRef, Route, RouteKind, reaction_answer
from bot.store import PendingAction
from bot.talk.events import Actor, Event, Message, Room
from bot.tools import Toolbox, ToolContext, ToolResult, canonical_json

log = structlog.get_logger(__name__)

CANCELLED_NOTE = "The user did not confirm the pending action; it was not run."
STATE_UNREADABLE = "the paused turn could not be read back; the action was not run"


# The call id of a confirmed command, which has no model turn around it.
COMMAND_CALL_ID = "command"


class ConfirmHandler:
    """The handlers of the confirm/deny/reaction/not-requester routes, and the prompt."""

    def __init__(
        self,
        *,
        confirmations: Confirmations,
        chat: ChatHandler,
        toolbox: Callable[[], Toolbox],  # the current one: !reload may replace it
        access: Access,
        history: History,
        command_prefix: Callable[[], str],
    ) -> None:
        self._confirmations = confirmations
        self._chat = chat
        self._toolbox = toolbox
        self._access = access
        self._history = history
        self._prefix = command_prefix

    # -- wiring points (app.py) -----------------------------------------------------

    async def lookup(self, room: str) -> tuple[PendingRef, ...]:
        """What routing needs to recognise answers in a room (EventHandler's lookup)."""
        waiting = await self._confirmations.open_in_room(room)
        return tuple(
            PendingRef(code=action.code, requester=action.requester, prompt=action.prompt_text)
            for action in waiting
        )

    async def on_confirmation(
        self, event: Event, ctx: ToolContext, needs: NeedsConfirmation
    ) -> None:
        """The loop paused on dangerous calls: store one action per call, post its prompt."""
        if ctx.unattended:
            # The loop refuses these already; a paused unattended turn is a bug upstream.
            log.error("confirm.refused_unattended", room=ctx.room, tools=len(needs.calls))
            return
        requester = Requester(
            actor_id=ctx.requester,
            name=event.actor.name or event.actor.uid,
            room=ctx.room,
            message_id=event.message.id if event.message is not None else "",
        )
        calls = [
            CallToConfirm(call.call_id, call.tool_name, call.args_json, call.approver)
            for call in needs.calls
        ]
        actions = await self._confirmations.request(requester, calls, needs.state.to_json())
        for action in actions:
            text = replies.defuse_mentions(self._prompt(action, ctx.timezone))
            if len(text) > replies.MESSAGE_LIMIT:
                await self._withdraw_unshowable(event, action, len(text))
                continue
            await self._confirmations.set_prompt(action, text)
            await self._chat.say(event, text)
            await self._confirmations.prompted(action)
            # The prompt quotes the model's arguments: as trusted as the turn that made them.
            state = needs.state
            await self._history.record_reply(
                ctx.room, text, untrusted=state.tainted, private=state.private
            )

    async def _withdraw_unshowable(self, event: Event, action: PendingAction, size: int) -> None:
        """A prompt must show every argument in full (§5): too large for one message, the
        call is refused rather than abbreviated; the rest of its turn still waits."""
        reason = f"the prompt would be {size} characters, more than one message holds"
        await self._confirmations.withdraw(action, reason=reason)
        note = replies.confirmation_too_large(action.tool, size)
        await self._chat.say(event, note)
        await self._history.record_reply(action.room, note, untrusted=False)  # our own words

    async def on_answer(self, event: Event, role: Role, route: Route) -> None:
        """CONFIRM / DENY: a yes- or no-word from someone the routing saw as a requester."""
        message = event.message
        if message is None:
            return
        waiting = await self._confirmations.open_in_room(event.room.token)
        match = self._confirmations.match_answer(
            waiting,
            actor_id=event.actor.id,
            message_id=message.id,
            code=route.code,
            replied_text=message.in_reply_to.text if message.in_reply_to else None,
        )
        await self._decide(event, role, match, approve=route.kind is RouteKind.CONFIRM)

    async def on_not_requester(self, event: Event, _role: Role, route: Route) -> None:
        """Someone else answered: nothing changes, and they are told who can (A05)."""
        waiting = await self._confirmations.open_in_room(event.room.token)
        chosen = [a for a in waiting if route.code is None or a.code == route.code]
        log.info("confirm.not_requester", room=event.room.token, actor=event.actor.id)
        await self._chat.say(
            event, replies.only_requester_can_confirm([a.requester_name for a in chosen])
        )

    async def on_reaction(self, event: Event, role: Role, route: Route) -> None:
        """👍/👎 on the bot's prompt, by the requester, where Talk names who reacted (#13.7).

        Routing (``reaction_route``) names the prompt the reaction is on, only for a Like
        in the Talk 23 shape on a message whose text is exactly a recorded prompt; up to
        Talk 22 the actor is the reacted message's author, so nothing there counts (I08).
        Any other reaction neither approves nor cancels: its reason is logged. Whether the
        reactor is the requester, and in time, is checked as for a yes-word (A05, A07).
        """
        answer = reaction_answer(event.reaction)
        message = event.message
        reason = route.reason or "not an answer"
        if (
            route.code is not None
            and message is not None
            and await self._confirmations.written_by_a_person(event.room.token, message.id)
        ):
            route, reason = replace(route, code=None), "on a person's copy of the prompt"
        if route.code is None or answer is None or message is None:
            log.info(
                "confirm.reaction_ignored",
                room=event.room.token,
                actor=event.actor.id,
                reason=reason,
            )
            return
        waiting = await self._confirmations.open_in_room(event.room.token)
        match = self._confirmations.match_answer(
            waiting, actor_id=event.actor.id, message_id=message.id, code=route.code
        )
        await self._decide(event, role, match, approve=answer is RouteKind.CONFIRM)

    async def on_chat(self, event: Event, role: Role, route: Route) -> None:
        """A chat turn; from a requester with actions waiting, it cancels them first (§5)."""
        note = None
        if route.cancels_pending and (waiting := await self._already_paused_on(event)):
            # This very message is resumed after a crash, and its turn had already paused
            # on a confirmation: the action waits. Its prompt is out, unless the crash came
            # between storing the action and posting the prompt: then it is posted now.
            log.info("confirm.turn_already_waiting", room=event.room.token)
            for action in waiting:
                if not action.prompted:
                    text = action.prompt_text or replies.defuse_mentions(
                        self._prompt(action, "UTC")
                    )
                    await self._confirmations.set_prompt(action, text)
                    await self._chat.say(event, text)
                    await self._confirmations.prompted(action)
                    log.info("confirm.prompt_posted_late", code=action.code)
            return
        if route.cancels_pending:
            cancelled = await self._confirmations.cancel_for_requester(
                event.room.token, event.actor.id
            )
            note = CANCELLED_NOTE if cancelled else None
        await self._chat.handle(event, role, note=note)

    async def _already_paused_on(self, event: Event) -> list[PendingAction]:
        """The actions this very message's turn paused on (empty: it did not)."""
        message_id = event.message.id if event.message is not None else ""
        return [
            action
            for action in await self._confirmations.open_in_room(event.room.token)
            if action.requester == event.actor.id and action.after_message_id == message_id
        ]

    async def recover_interrupted(self, alive: Sequence[str] = ()) -> None:
        """Fail what was running on a replica that is gone and tell the requester: at
        start, before the dispatcher (the last process), and with replicas now and then."""
        for action in await self._confirmations.recover_interrupted(alive):
            text = replies.confirmation_interrupted(
                action.tool, action.code, action.requester_name or action.requester
            )
            await self._chat.say(_origin_event(action), text)

    async def request_command(self, event: Event, role: Role, tool_name: str) -> None:
        """A command (not a model turn) that needs a yes first, like ``!restart``."""
        tool = self._toolbox().get(tool_name)
        if tool is None:
            await self._chat.say(event, replies.apology())
            return
        call = PendingCall(
            call_id=COMMAND_CALL_ID, tool_name=tool_name, args_json="{}", approver=tool.approver
        )
        needs = NeedsConfirmation(text=None, calls=(call,), state=TurnState(messages=()))
        await self.on_confirmation(event, self._chat.context_for(event, role), needs)

    # -- admin commands (built on by the admin issue) ----------------------------------

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
        ok = await self._run(_origin_event(action), role, action)
        return replies.admin_approved(action.code, action.tool, action.room, ok=ok)

    async def listing(self, timezone: str = "UTC") -> str:
        """``!pending``: every unfinished action in every room, oldest first, abbreviated."""
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

    async def details(self, code: str, timezone: str = "UTC") -> str:
        """``!pending CODE``: one action with every argument in full, escaped like its prompt."""
        action = await self._confirmations.by_code(code)
        if action is None:
            return replies.admin_no_action(code.strip().upper())
        text = replies.pending_call(
            action.code,
            tool=action.tool,
            room=action.room,
            requester=action.requester,
            status=action.status,
            expires=_clock_time(action.expires_at, timezone),
            args=_args_for_display(action.args_json),
            args_hash=action.args_hash,
        )
        if len(text) > replies.MESSAGE_LIMIT:
            return replies.pending_call_too_large(action.code, len(text))
        return text

    async def cancel_by_admin(self, code: str, admin_id: str) -> str:
        """``!cancel CODE``: deny a waiting action; its turn resumes without it."""
        action = await self._confirmations.by_code(code)
        if action is None:
            return replies.admin_no_action(code.upper())
        if not await self._confirmations.deny(action, by=admin_id):
            return replies.admin_action_not_waiting(action.code, action.status)
        role = self._access.role_of(action.requester)
        await self._after_decision(_origin_event(action), role, action, "denied")
        return replies.admin_cancelled(action.code)

    # -- deciding ----------------------------------------------------------------------

    async def _decide(self, event: Event, role: Role, match: Match, *, approve: bool) -> None:
        action = match.action
        if match.verdict is Verdict.OK and action is not None:
            if approve:
                await self._approve(event, role, action)
            elif await self._confirmations.deny(action, by=event.actor.id):
                await self._after_decision(event, role, action, "denied")
            return
        await self._refuse(event, match)

    async def _refuse(self, event: Event, match: Match) -> None:
        action = match.action
        log.info("confirm.answer_refused", verdict=match.verdict.value, room=event.room.token)
        if match.verdict is Verdict.AMBIGUOUS:
            text = replies.confirmation_ambiguous([a.code for a in match.candidates])
        elif match.verdict is Verdict.NOT_REQUESTER:
            text = replies.only_requester_can_confirm([a.requester_name for a in match.candidates])
        elif match.verdict is Verdict.EXPIRED and action is not None:
            await self._confirmations.expire(action)
            text = replies.confirmation_expired(action.code)
        elif match.verdict is Verdict.TOO_EARLY and action is not None:
            text = replies.confirmation_too_early(action.code)
        else:
            return
        await self._chat.say(event, text)

    async def _approve(self, event: Event, role: Role, action: PendingAction) -> None:
        if not self._confirmations.requester_may_approve(action, role):
            text = replies.confirmation_needs_admin(action.code, self._prefix())
            await self._chat.say(event, text)
            return
        verdict = await self._confirmations.approve(action, by=event.actor.id)
        if verdict is Verdict.EXPIRED:
            await self._chat.say(event, replies.confirmation_expired(action.code))
            return
        if verdict is not Verdict.OK:
            return  # another answer decided it first (A08): this one does nothing
        await self._run(event, role, action)

    async def _run(self, event: Event, role: Role, action: PendingAction) -> bool:
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
        await self._after_decision(event, role, action, "done" if result.ok else "failed")
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

    async def _after_decision(
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
        await self._chat.resume(event, ctx, state, _results(decided))

    def _prompt(self, action: PendingAction, timezone: str) -> str:
        return replies.confirmation_prompt(
            tool=action.tool,
            args=_args_for_display(action.args_json),
            args_hash=action.args_hash,
            code=action.code,
            requester=action.requester_name or action.requester,
            expires=_clock_time(action.expires_at, timezone),
        )


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
