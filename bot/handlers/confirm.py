"""Answers to confirmation prompts: yes/no words, 👍/👎 on a prompt, someone else's answer,
and the chat route, where a requester's new message cancels what waits (§5). What the
answers set going (running the call, resuming the turn) is ``approvals``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import structlog

from bot import replies
from bot.config import Role
from bot.confirmations import Confirmations, Match, Verdict
from bot.handlers.approvals import Approvals
from bot.handlers.chat import ChatHandler
from bot.routing import Route, RouteKind, reaction_answer
from bot.store import PendingAction
from bot.talk.events import Event

log = structlog.get_logger(__name__)

CANCELLED_NOTE = "The user did not confirm the pending action; it was not run."


class ConfirmHandler:
    """The route handlers of the answers (confirm, deny, reaction, not-requester) and of
    chat, where an answer's absence counts: a requester's new message cancels."""

    def __init__(
        self,
        *,
        confirmations: Confirmations,
        approvals: Approvals,
        chat: ChatHandler,
        command_prefix: Callable[[], str],
    ) -> None:
        self._confirmations = confirmations
        self._approvals = approvals
        self._chat = chat
        self._prefix = command_prefix

    async def on_answer(self, event: Event, role: Role, route: Route) -> None:
        """CONFIRM / DENY: a yes- or no-word from someone the routing saw as a requester."""
        message = event.message
        if message is None or await self._went_on_before_a_crash(event, route):
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
        if message is not None and await self._went_on_before_a_crash(event, route):
            return  # the prompt it answered is decided: routing no longer names it
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
        """A chat turn; from a requester with actions waiting, it cancels them first (§5).
        The turn's outcome is settled here: answered, or parked until someone says yes."""
        note = None
        if await self._went_on_before_a_crash(event, route):
            return
        if route.cancels_pending:
            cancelled = await self._confirmations.cancel_for_requester(
                event.room.token, event.actor.id
            )
            note = CANCELLED_NOTE if cancelled else None
        outcome = await self._chat.take_turn(event, role, note=note)
        if outcome is not None:  # the room's new holder redoes this event: post nothing
            self._chat.check_still_serving(event.room.token)
        await self._approvals.settle(event, outcome)

    async def _went_on_before_a_crash(self, event: Event, route: Route) -> bool:
        """Whether this message is redone after a crash and its turn (a chat turn, or one
        resumed by this answer) had already paused on confirmations: that turn goes on
        from them (answered, expired or still waiting) and is never run again. The
        requester has seen each one's prompt, unless the crash came between storing the
        action and posting it: then the prompt is posted now or, past its expiry, they
        are told it expired."""
        if not route.redone or not (paused := await self._already_paused_on(event)):
            return False
        log.info("confirm.turn_already_paused", room=event.room.token)
        for action in paused:
            if action.prompted:
                continue  # seen: decided, or waiting with its grace for a late yes
            if action.status == "pending" and not self._confirmations.is_expired(action):
                text = action.prompt_text or replies.defuse_mentions(
                    self._approvals.prompt_for(action, "UTC")
                )
                await self._approvals.post_prompt(event, action, text)
                log.info("confirm.prompt_posted_late", code=action.code)
                continue
            if action.status == "pending":
                await self._confirmations.expire(action)
            if (await self._confirmations.current(action)).status == "expired":
                await self._approvals.tell_expired(event, action)
        return True

    async def _already_paused_on(self, event: Event) -> list[PendingAction]:
        """The actions this very message's turn paused on, whatever became of them
        (empty: it did not pause)."""
        message_id = event.message.id if event.message is not None else ""
        return [
            action
            for action in await self._confirmations.of_message(event.room.token, message_id)
            if action.requester == event.actor.id
        ]

    # -- deciding ----------------------------------------------------------------------

    async def _decide(self, event: Event, role: Role, match: Match, *, approve: bool) -> None:
        action = match.action
        if match.verdict is Verdict.OK and action is not None:
            if approve:
                await self._approve(event, role, action)
            elif await self._confirmations.deny(action, by=event.actor.id):
                await self._approvals.after_decision(event, role, action, "denied")
            elif (await self._confirmations.current(action)).status == "expired":
                await self._refuse(event, Match(Verdict.EXPIRED, action))  # at the boundary
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
        await self._approvals.run(event, role, action)
