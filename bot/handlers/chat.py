"""A chat turn: build the prompt, run the agent loop, return its outcome; and answer in the
room (the route that took the turn settles the outcome, ``approvals.settle``)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from bot import replies
from bot.agent.history import History
from bot.agent.llm import LLM, Completion
from bot.agent.loop import (
    GaveUp,
    NeedsConfirmation,
    Reply,
    TurnOutcome,
    TurnState,
    resume_turn,
    run_turn,
)
from bot.agent.prompts import system_prompt
from bot.clock import Clock
from bot.config import ChatSettings, LimitsSettings, LLMSettings, Role
from bot.crashpoints import crash_point
from bot.errors import LeaseLostError, TalkError
from bot.metrics import Metrics
from bot.quotas import Quotas
from bot.store import TokenCount
from bot.talk.events import Event
from bot.talk.poster import Poster
from bot.tools import Toolbox, ToolContext

log = structlog.get_logger(__name__)

WORKING_REACTION = "👀"
# The 👀 shows when a turn runs longer than usual: past WORKING_FACTOR times the median of the
# last TURNS_REMEMBERED turns, never sooner than WORKING_AFTER_S, never later than
# WORKING_MAX_S. At a model's usual pace most turns then cost one Talk call, not three.
WORKING_AFTER_S = 2.0
WORKING_FACTOR = 1.5
WORKING_MAX_S = 30.0
TURNS_REMEMBERED = 50
TURNS_BEFORE_LEARNING = 5
# Said to the model before a scheduled prompt (run_unattended).
SCHEDULED_TURN_NOTE = (
    "This is a scheduled task its creator set up earlier; nobody is waiting in the chat. "
    "Do what the next message asks and write the answer to post in the room. "
    "Actions that need a confirmation are not available."
)


@dataclass
class ChatDeps:
    llm: LLM
    # The current toolbox, read as a turn starts: !reload and the MCP servers replace it,
    # and a running turn keeps the one it started with.
    toolbox: Callable[[], Toolbox]
    history: History
    poster: Poster
    clock: Clock
    metrics: Metrics
    chat: ChatSettings
    llm_settings: LLMSettings
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    # Daily token quotas and the usage record; None: neither (unit tests of the chat).
    quotas: Quotas | None = None
    # With replicas: whether this replica's lease on a room is surely still good
    # (Coordinator.holds); always true for one process.
    still_holds: Callable[[str], bool] = lambda _room: True


class ChatHandler:
    def __init__(self, deps: ChatDeps) -> None:
        self._deps = deps
        self._model_slots = asyncio.Semaphore(deps.llm_settings.concurrency)
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._turn_seconds: deque[float] = deque(maxlen=TURNS_REMEMBERED)
        self._model = _ClientOfTheMoment(deps)

    def reconfigure(
        self,
        chat: ChatSettings,
        llm_settings: LLMSettings,
        *,
        llm: LLM | None = None,
        limits: LimitsSettings | None = None,
    ) -> None:
        self._deps.chat = chat
        self._deps.llm_settings = llm_settings
        self._deps.limits = limits or self._deps.limits
        self._deps.llm = llm or self._deps.llm

    def check_still_serving(self, room: str) -> None:
        """Before posting what a turn produced: LeaseLostError if this replica's lease on
        the room lapsed during the turn (a stalled heartbeat), when another replica may
        have taken the room and be redoing the event: one answer, the holder's."""
        if not self._deps.still_holds(room):
            raise LeaseLostError(f"the lease on {room} lapsed during the turn")

    def context_for(self, event: Event, role: Role, *, tainted: bool = False) -> ToolContext:
        """``tainted``: the turn's input already holds content the requester did not write."""
        return ToolContext(
            requester=event.actor.id,
            role=role,
            room=event.room.token,
            unattended=False,
            tainted=tainted,
            request=event.message.text if event.message is not None else "",
            now=self._deps.clock.now,
            timezone=self._deps.chat.timezone,
        )

    async def take_turn(
        self, event: Event, role: Role, *, note: str | None = None
    ) -> TurnOutcome | None:
        """One turn for one message, counted; ``note`` tells the model something first (a
        cancel). None: a daily quota stopped it before the model, and the person was told."""
        deps = self._deps
        recalled = await deps.history.recall(event.room.token, requester=event.actor.id)
        ctx = self.context_for(event, role, tainted=recalled.untrusted)
        messages = [{"role": "system", "content": self._system_prompt(event, role)}]
        messages += recalled.messages
        if note:
            messages.append({"role": "system", "content": note})
        started = time.monotonic()
        async with self._room_lock(event.room.token):
            if await self._over_quota(event, ctx):
                return None
            async with self._working(event), self._model_slots:
                result = await run_turn(
                    self._model,
                    deps.toolbox(),
                    ctx,
                    messages,
                    max_rounds=deps.llm_settings.max_rounds,
                    limits=deps.limits,
                )
            deps.metrics.turn_seconds.observe(time.monotonic() - started)
            await self._account(ctx, result)
        return result

    async def resume(
        self, event: Event, ctx: ToolContext, state: TurnState, results: dict[str, str]
    ) -> TurnOutcome:
        """Continue a turn paused for confirmation (``approvals``), counted; its outcome."""
        deps = self._deps
        async with self._room_lock(event.room.token):
            async with self._working(event), self._model_slots:
                result = await resume_turn(
                    self._model,
                    deps.toolbox(),
                    ctx,
                    state,
                    results,
                    max_rounds=deps.llm_settings.max_rounds,
                    limits=deps.limits,
                )
            await self._account(ctx, result)
        return result

    async def answer(self, event: Event, result: Reply | GaveUp) -> None:
        """Answer in the room with what the turn produced, and remember a reply."""
        text = result.text if isinstance(result, Reply) else _gave_up_text(result)
        crash_point("before_reply")
        await self.say(event, text)
        if isinstance(result, Reply):
            await self._remember(event.room.token, result)

    async def _remember(self, room: str, reply: Reply) -> None:
        """The turn's tool results as tool rows, then the answer, each with its provenance:
        an answer written after outside content carries that into later turns (I04)."""
        history = self._deps.history
        for output in reply.tool_results:
            await history.record_tool(
                room, output.tool, output.text, untrusted=output.untrusted, private=output.private
            )
        await history.record_reply(
            room, reply.text, untrusted=reply.untrusted, private=reply.private
        )

    async def say(self, event: Event, text: str) -> None:
        reply_to = event.message.id if event.message is not None else None
        try:
            await self._deps.poster.send_message(
                event.room.token,
                replies.defuse_mentions(text),
                reply_to=reply_to,
                reference_id=f"talkbot-{event.room.token}-{reply_to or 'x'}",
            )
        except TalkError as exc:
            log.warning("chat.reply_failed", status=exc.status, error=type(exc).__name__)

    async def run_unattended(
        self, room: str, requester: str, role: Role, prompt: str, timezone: str
    ) -> str:
        """A scheduled agent turn: nobody can confirm anything; returns the text to post."""
        deps = self._deps
        recalled = await deps.history.recall(room, requester=requester)
        ctx = ToolContext(
            requester=requester,
            role=role,
            room=room,
            now=deps.clock.now,
            timezone=timezone,
            unattended=True,
            tainted=recalled.untrusted,
            request=prompt,  # the creator's own words, confirmed if they came from elsewhere
        )
        system = system_prompt(
            deps.chat.persona,
            bot_name=deps.chat.bot_name,
            requester_name=requester,
            requester_id=requester,
            role=role,
            room_is_one_to_one=False,
            now=datetime.fromtimestamp(deps.clock.now(), ZoneInfo(timezone)),
            timezone=timezone,
        )
        messages = [{"role": "system", "content": system}]
        messages += recalled.messages
        messages.append({"role": "system", "content": SCHEDULED_TURN_NOTE})
        messages.append({"role": "user", "content": prompt})
        async with self._room_lock(room), self._model_slots:
            result = await run_turn(
                self._model,
                deps.toolbox(),
                ctx,
                messages,
                max_rounds=deps.llm_settings.max_rounds,
                limits=deps.limits,
            )
        await self._account(ctx, result)
        if isinstance(result, Reply):
            await self._remember(room, result)
            return result.text
        if isinstance(result, NeedsConfirmation):  # the loop refuses these when unattended
            return replies.apology()
        return _gave_up_text(result)

    async def _over_quota(self, event: Event, ctx: ToolContext) -> bool:
        """Whether a daily quota stops this turn before the model is asked; the person
        is told whose quota it is and when it resets."""
        quotas = self._deps.quotas
        if quotas is None:
            return False
        over = await quotas.check(ctx.requester, ctx.room, ctx.role)
        if over is None:
            return False
        self._deps.metrics.turns.labels(outcome="over_quota", role=ctx.role).inc()
        await self.say(
            event, replies.over_quota(over.scope, over.limit, over.resets_at, now=quotas.now())
        )
        return True

    async def _account(self, ctx: ToolContext, result: TurnOutcome) -> None:
        """Count the run and its tokens (metrics), and add them to today's usage. A turn
        paused for a confirmation is one turn in the usage, counted when it ends; its
        tokens count as they are spent (up to the pause, then the resumed run's)."""
        metrics, usage = self._deps.metrics, result.usage
        done = not isinstance(result, NeedsConfirmation)
        metrics.turns.labels(outcome=type(result).__name__.lower(), role=ctx.role).inc()
        metrics.tokens.labels(role=ctx.role, kind="prompt").inc(usage.prompt)
        metrics.tokens.labels(role=ctx.role, kind="completion").inc(usage.completion)
        if self._deps.quotas is not None:
            count = TokenCount(usage.prompt, usage.completion, int(done), usage.estimated)
            await self._deps.quotas.record(ctx.requester, ctx.room, count)

    def _room_lock(self, room: str) -> asyncio.Lock:
        """One turn at a time per room, whoever starts it: the dispatcher already orders
        a room's messages; this also keeps scheduled and admin-approved turns in line."""
        return self._room_locks.setdefault(room, asyncio.Lock())

    def _system_prompt(self, event: Event, role: Role) -> str:
        chat = self._deps.chat
        return system_prompt(
            chat.persona,
            bot_name=chat.bot_name,
            requester_name=event.actor.name,
            requester_id=event.actor.id,
            role=role,
            room_is_one_to_one=event.room.is_one_to_one,
            now=datetime.fromtimestamp(self._deps.clock.now(), ZoneInfo(chat.timezone)),
            timezone=chat.timezone,
        )

    @contextlib.asynccontextmanager
    async def _working(self, event: Event) -> AsyncIterator[None]:
        """React with 👀 when a turn takes a while, and take it back when done."""
        message = event.message
        if message is None:
            yield
            return
        reacted = asyncio.Event()
        after = self.working_after()
        task = asyncio.create_task(self._react_later(event.room.token, message.id, reacted, after))
        started = time.monotonic()
        try:
            yield
        finally:
            self._turn_seconds.append(time.monotonic() - started)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if reacted.is_set():
                await self._quietly(self._deps.poster.unreact, event.room.token, message.id)

    def working_after(self) -> float:
        """How long a turn runs before the 👀 shows: longer than the usual turn."""
        if len(self._turn_seconds) < TURNS_BEFORE_LEARNING:
            return WORKING_AFTER_S
        usual = statistics.median(self._turn_seconds)
        return min(WORKING_MAX_S, max(WORKING_AFTER_S, usual * WORKING_FACTOR))

    async def _react_later(
        self, token: str, message_id: str, reacted: asyncio.Event, after: float
    ) -> None:
        await asyncio.sleep(after)
        if await self._quietly(self._deps.poster.react, token, message_id):
            reacted.set()

    async def _quietly(
        self, call: Callable[[str, Any, str], Awaitable[None]], token: str, message_id: str
    ) -> bool:
        try:
            await call(token, message_id, WORKING_REACTION)
        except TalkError as exc:
            log.info("chat.reaction_failed", status=exc.status)
            return False
        return True


def _gave_up_text(result: GaveUp) -> str:
    if result.reason == "llm_error":
        return replies.llm_notice(result.llm_error_kind)
    if result.reason == "max_rounds":
        return result.text or replies.gave_up_rounds(())
    if result.reason == "length":
        return replies.cut_off()
    return result.text or replies.empty_answer()


class _ClientOfTheMoment:
    """The model client each round of a turn asks: the one in use when the round starts.
    A `!reload` swaps it between two rounds of a running turn; the old one lets its
    calls under way finish and refuses new ones (bot/agent/llm.py)."""

    def __init__(self, deps: ChatDeps) -> None:
        self._deps = deps

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Completion:
        return await self._deps.llm.complete(messages, tools)
