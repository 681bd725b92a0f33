"""The tool loop: model round, tool calls, repeat; the next step is always a returned value."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from bot.agent import prompts
from bot.agent.llm import LLM, Completion, LLMCallError, ToolCallRequest
from bot.config import Approver
from bot.errors import LLMError, ToolError
from bot.tools import Tool, Toolbox, ToolContext, canonical_json, parse_arguments

log = structlog.get_logger(__name__)

STATE_VERSION = 1
MAX_TOOL_NAME_CHARS = 64


@dataclass(frozen=True)
class Reply:
    text: str
    rounds: int
    tools_used: tuple[str, ...]
    # (tool name, result text) of every call that ran in this turn, for the room's history;
    # derived from the turn's messages, so not part of what makes two replies equal.
    tool_results: tuple[tuple[str, str], ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class PendingCall:
    """A call waiting for a human: exactly this tool with exactly these canonical arguments."""

    call_id: str
    tool_name: str
    args_json: str
    approver: Approver


@dataclass(frozen=True)
class TurnState:
    """A paused turn; survives a restart through to_json/from_json."""

    messages: tuple[dict[str, Any], ...]
    rounds: int = 0
    tainted: bool = False
    tools_used: tuple[str, ...] = ()
    pending: tuple[PendingCall, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": STATE_VERSION,
                "messages": list(self.messages),
                "rounds": self.rounds,
                "tainted": self.tainted,
                "tools_used": list(self.tools_used),
                "pending": [vars(call) for call in self.pending],
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> TurnState:
        """Raises ValueError when the text is not a state this version wrote."""
        try:
            return cls._from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a turn state: {exc}") from None

    @classmethod
    def _from_dict(cls, data: Any) -> TurnState:
        if data["v"] != STATE_VERSION:
            raise ValueError(f"version {data['v']!r} is not {STATE_VERSION}")
        if not all(isinstance(message, dict) for message in data["messages"]):
            raise ValueError("messages must be objects")
        return cls(
            messages=tuple(data["messages"]),
            rounds=int(data["rounds"]),
            tainted=bool(data["tainted"]),
            tools_used=tuple(str(name) for name in data["tools_used"]),
            pending=tuple(PendingCall(**call) for call in data["pending"]),
        )


@dataclass(frozen=True)
class NeedsConfirmation:
    text: str | None  # what the model said alongside its calls
    calls: tuple[PendingCall, ...]
    state: TurnState


@dataclass(frozen=True)
class GaveUp:
    reason: str  # "max_rounds" | "llm_error" | "length" | "empty"
    text: str | None = None  # a final message for the user, when there is one
    llm_error_kind: str | None = None  # LLMCallError.kind for "llm_error"
    rounds: int = 0
    tools_used: tuple[str, ...] = ()


TurnOutcome = Reply | NeedsConfirmation | GaveUp


async def run_turn(
    llm: LLM, toolbox: Toolbox, ctx: ToolContext, messages: list[dict[str, Any]], *, max_rounds: int
) -> TurnOutcome:
    """Run a turn whose messages already hold the system prompt, history and new message."""
    state = TurnState(messages=tuple(messages), tainted=ctx.tainted)
    return await _timed(llm, toolbox, ctx, state, max_rounds)


async def resume_turn(
    llm: LLM,
    toolbox: Toolbox,
    ctx: ToolContext,
    state: TurnState,
    results: dict[str, str],
    *,
    max_rounds: int,
) -> TurnOutcome:
    """Continue a paused turn; ``results`` maps call ids to what happened to each pending call.

    A pending call missing from ``results`` counts as not confirmed. The model always gets
    at least one more round to report the outcome.
    """
    answers = [
        _tool_message(call.call_id, results.get(call.call_id, prompts.NOT_CONFIRMED))
        for call in state.pending
    ]
    resumed = replace(state, messages=(*state.messages, *answers), pending=())
    return await _timed(llm, toolbox, ctx, resumed, max(max_rounds, state.rounds + 1))


async def _timed(
    llm: LLM, toolbox: Toolbox, ctx: ToolContext, state: TurnState, max_rounds: int
) -> TurnOutcome:
    started = time.perf_counter()
    outcome = await _drive(llm, toolbox, ctx, state, max_rounds)
    rounds, tools = _summary(outcome)
    log.info(
        "turn.done",
        outcome=type(outcome).__name__,
        reason=outcome.reason if isinstance(outcome, GaveUp) else None,
        rounds=rounds,
        tools=",".join(tools),
        ms=round((time.perf_counter() - started) * 1000),
    )
    return outcome


def _summary(outcome: TurnOutcome) -> tuple[int, tuple[str, ...]]:
    if isinstance(outcome, NeedsConfirmation):
        return outcome.state.rounds, outcome.state.tools_used
    return outcome.rounds, outcome.tools_used


async def _drive(
    llm: LLM, toolbox: Toolbox, ctx: ToolContext, state: TurnState, max_rounds: int
) -> TurnOutcome:
    specs = toolbox.specs_for(ctx.role, unattended=ctx.unattended)
    while state.rounds < max_rounds:
        try:
            completion = await llm.complete(list(state.messages), specs)
        except LLMError as exc:
            kind = exc.kind if isinstance(exc, LLMCallError) else "bad_response"
            return GaveUp(
                "llm_error", llm_error_kind=kind, rounds=state.rounds, tools_used=state.tools_used
            )
        state = replace(state, rounds=state.rounds + 1)
        if not completion.tool_calls:
            return _final(completion, state)
        state = await _run_round(toolbox, ctx, state, completion)
        if state.pending:
            return NeedsConfirmation(completion.text, state.pending, state)
    summary = prompts.max_rounds_summary(state.rounds, state.tools_used)
    return GaveUp("max_rounds", summary, rounds=state.rounds, tools_used=state.tools_used)


def _final(completion: Completion, state: TurnState) -> Reply | GaveUp:
    text = (completion.text or "").strip()
    if completion.finish_reason == "length":
        if not text:
            return GaveUp("length", rounds=state.rounds, tools_used=state.tools_used)
        text = f"{text}\n\n{prompts.TRUNCATED_NOTE}"
    if not text:
        return GaveUp("empty", rounds=state.rounds, tools_used=state.tools_used)
    return Reply(text, state.rounds, state.tools_used, tool_results(state.messages))


def tool_results(messages: tuple[dict[str, Any], ...]) -> tuple[tuple[str, str], ...]:
    """The tool results among a turn's messages, each with the name of its tool."""
    names = {
        call.get("id"): call.get("function", {}).get("name", "?")
        for message in messages
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or ()
        if isinstance(call, dict)
    }
    return tuple(
        (str(names.get(message.get("tool_call_id"), "?")), str(message.get("content", "")))
        for message in messages
        if message.get("role") == "tool"
    )


@dataclass(frozen=True)
class _Call:
    id: str
    name: str
    arguments: str  # what goes into the history: the model's text if it is a JSON object


def _normalise(calls: tuple[ToolCallRequest, ...], state: TurnState) -> list[_Call]:
    """Unique ids (generated when missing or repeated) and history-safe arguments."""
    seen = {
        call.get("id")
        for message in state.messages
        for call in message.get("tool_calls") or ()
        if isinstance(call, dict)
    }
    out = []
    for index, call in enumerate(calls):
        call_id = call.id
        if call_id is None or call_id in seen:
            call_id = f"call_r{state.rounds}_{index}"
        seen.add(call_id)
        try:
            arguments = json.dumps(parse_arguments(call.arguments), ensure_ascii=False)
        except ToolError:
            arguments = "{}"  # servers re-parse history; broken JSON there fails the next round
        out.append(_Call(call_id, call.name[:MAX_TOOL_NAME_CHARS], arguments))
    return out


def _assistant_message(text: str | None, calls: list[_Call]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ],
    }


def _tool_message(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


async def _run_round(
    toolbox: Toolbox, ctx: ToolContext, state: TurnState, completion: Completion
) -> TurnState:
    calls = _normalise(completion.tool_calls, state)
    messages = [*state.messages, _assistant_message(completion.text, calls)]
    pending: list[PendingCall] = []
    for request, call in zip(completion.tool_calls, calls, strict=True):
        step = await _handle_call(toolbox, replace(ctx, tainted=state.tainted), call, request)
        if isinstance(step, PendingCall):
            pending.append(step)
            continue
        text, tool = step
        messages.append(_tool_message(call.id, text))
        if tool is not None:
            state = replace(
                state,
                tools_used=(*state.tools_used, tool.name),
                tainted=state.tainted or tool.untrusted_output,
            )
    return replace(state, messages=tuple(messages), pending=tuple(pending))


async def _handle_call(
    toolbox: Toolbox, ctx: ToolContext, call: _Call, request: ToolCallRequest
) -> PendingCall | tuple[str, Tool[Any] | None]:
    """A PendingCall, or the result text and the tool if it ran."""
    try:
        tool = toolbox.authorize(request.name, ctx)
        args = toolbox.validate(tool.name, request.arguments)
        await toolbox.precheck(tool, args, ctx)
    except ToolError as exc:
        return f"error: {exc}", None
    if toolbox.needs_confirmation(tool, args, ctx):
        if ctx.unattended:
            log.warning("tool.refused", tool=tool.name, reason="unattended", actor=ctx.requester)
            return prompts.UNATTENDED_REFUSED, None
        return PendingCall(call.id, tool.name, canonical_json(args), tool.approver)
    result = await toolbox.execute(tool.name, args, ctx)
    return (result.text if result.ok else f"error: {result.text}"), tool
