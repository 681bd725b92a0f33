"""Metrics around the adapters and stores: subclasses and wrappers the app wires in."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from bot.agent.llm import LLM, Completion, LLMCallError
from bot.clock import Clock
from bot.config import ConfirmSettings, LLMSettings, ToolsSettings
from bot.confirmations import Confirmations, Verdict
from bot.errors import (
    TalkAuthError,
    TalkError,
    TalkOutcomeUnknownError,
    TalkRateLimitedError,
    TalkRejectedError,
)
from bot.metrics import Metrics
from bot.scheduler import Deliver, ScheduledJob, Skipped
from bot.store import PendingAction, Store
from bot.talk.poster import Poster
from bot.tools import Tool, Toolbox, ToolContext, ToolResult

_T = TypeVar("_T")


class MeteredLLM(LLM):
    """The model client, timing every request and counting failures by kind."""

    def __init__(self, settings: LLMSettings, metrics: Metrics) -> None:
        super().__init__(settings)
        self._metrics = metrics

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Completion:
        started = time.perf_counter()
        try:
            return await super().complete(messages, tools)
        except LLMCallError as exc:
            self._metrics.llm_errors.labels(kind=exc.kind).inc()
            raise
        finally:
            self._metrics.llm_seconds.observe(time.perf_counter() - started)


class MeteredToolbox(Toolbox):
    """The toolbox, counting every executed call by tool and outcome."""

    def __init__(
        self, tools: Sequence[Tool[Any]], settings: ToolsSettings, *, metrics: Metrics
    ) -> None:
        super().__init__(tools, settings)
        self._metrics = metrics

    async def execute(
        self, name: str, args: Any, ctx: ToolContext, *, confirmed: bool = False
    ) -> ToolResult:
        result = await super().execute(name, args, ctx, confirmed=confirmed)
        label = name if name in self.names else "unknown"  # model-chosen names stay bounded
        self._metrics.tool_calls.labels(tool=label, outcome="ok" if result.ok else "failed").inc()
        return result


_SEND_OUTCOMES: tuple[tuple[type[TalkError], str], ...] = (
    (TalkOutcomeUnknownError, "unknown"),  # timed out: Talk may have stored it
    (TalkAuthError, "auth"),
    (TalkRateLimitedError, "rate_limited"),
    (TalkRejectedError, "rejected"),
)


class MeteredPoster:
    """Counts every bot API call (talkbot_talk_sends) around whatever poster it wraps."""

    def __init__(self, inner: Poster, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics

    async def send_message(
        self,
        token: str,
        message: str,
        *,
        reply_to: int | str | None = None,
        reference_id: str | None = None,
        silent: bool = False,
    ) -> list[str]:
        call = self.inner.send_message(
            token, message, reply_to=reply_to, reference_id=reference_id, silent=silent
        )
        return await self._count(call)

    async def react(self, token: str, message_id: int | str, reaction: str) -> None:
        await self._count(self.inner.react(token, message_id, reaction))

    async def unreact(self, token: str, message_id: int | str, reaction: str) -> None:
        await self._count(self.inner.unreact(token, message_id, reaction))

    async def _count(self, call: Awaitable[_T]) -> _T:
        try:
            result = await call
        except TalkError as exc:
            outcome = next((o for k, o in _SEND_OUTCOMES if isinstance(exc, k)), "unavailable")
            self._metrics.talk_sends.labels(outcome=outcome).inc()
            raise
        self._metrics.talk_sends.labels(outcome="ok").inc()
        return result


class MeteredConfirmations(Confirmations):
    """Pending actions, counting every decision (talkbot_confirmations) by outcome."""

    def __init__(
        self, store: Store, clock: Clock, settings: ConfirmSettings, *, metrics: Metrics
    ) -> None:
        super().__init__(store, clock, settings)
        self._metrics = metrics

    async def approve(self, action: PendingAction, *, by: str) -> Verdict:
        verdict = await super().approve(action, by=by)
        if verdict is Verdict.OK:
            self._count("approved")
        return verdict

    async def deny(self, action: PendingAction, *, by: str) -> bool:
        return self._count_if(await super().deny(action, by=by), "denied")

    async def expire(self, action: PendingAction) -> bool:
        return self._count_if(await super().expire(action), "expired")

    async def cancel_for_requester(self, room: str, requester: str) -> list[PendingAction]:
        cancelled = await super().cancel_for_requester(room, requester)
        for _action in cancelled:
            self._count("cancelled")
        return cancelled

    def _count_if(self, decided: bool, outcome: str) -> bool:
        if decided:
            self._count(outcome)
        return decided

    def _count(self, outcome: str) -> None:
        self._metrics.confirmations.labels(outcome=outcome).inc()


def count_runs(deliver: Deliver, metrics: Metrics) -> Deliver:
    """The scheduler's delivery, counting each run (talkbot_schedule_runs) by outcome."""

    async def counted(job: ScheduledJob, fire_time: int) -> Skipped | None:
        try:
            result = await deliver(job, fire_time)
        except Exception:
            metrics.schedule_runs.labels(outcome="failed").inc()
            raise
        metrics.schedule_runs.labels(outcome="delivered" if result is None else "skipped").inc()
        return result

    return counted
