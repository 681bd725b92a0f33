"""The tool loop: model round, tool calls, repeat; the next step is always a returned value."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from bot import replies
from bot.agent import prompts
from bot.agent.llm import Completion, LLMCallError, ToolCallRequest, Usage
from bot.config import LimitsSettings
from bot.confirmations import PendingCall
from bot.errors import LLMError, ToolError
from bot.i18n import _
from bot.tools import Tool, Toolbox, ToolContext, canonical_json, parse_arguments

log = structlog.get_logger(__name__)

STATE_VERSION = 1
MAX_TOOL_NAME_CHARS = 64


@dataclass(frozen=True)
class ToolOutput:
    """A tool result of this turn, with where its text came from (for the room's history)."""

    tool: str
    text: str
    untrusted: bool = False  # from a tool that brings outside content
    private: bool = False  # from a tool that reads private data


@dataclass(frozen=True)
class Reply:
    text: str
    rounds: int
    tools_used: tuple[str, ...]
    # Every tool result of this turn, for the room's history; derived from the turn's
    # messages, so not part of what makes two replies equal. So is the turn's provenance,
    # which the answer carries into later turns (an answer after a page is not clean).
    tool_results: tuple[ToolOutput, ...] = field(default=(), compare=False)
    untrusted: bool = field(default=False, compare=False)
    private: bool = field(default=False, compare=False)
    # Tokens of the model requests this run of the turn made (every outcome has them).
    usage: Usage = field(default=Usage(), compare=False)


@dataclass(frozen=True)
class TurnState:
    """A paused turn; survives a restart through to_json/from_json."""

    messages: tuple[dict[str, Any], ...]
    rounds: int = 0
    tainted: bool = False  # untrusted content entered the turn (ToolContext.tainted)
    tools_used: tuple[str, ...] = ()
    pending: tuple[PendingCall, ...] = field(default=())
    private: bool = False  # a reads_private tool ran in this turn
    request: str = ""  # the requester's own message that started the turn
    start: int = 0  # messages from here on are this turn's own (its tool results)
    calls: int = 0  # tool calls handled so far, for [limits]
    fetches: int = 0
    capped: int = 0  # calls not run because of a cap

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": STATE_VERSION,
                "messages": list(self.messages),
                "rounds": self.rounds,
                "tainted": self.tainted,
                "tools_used": list(self.tools_used),
                "pending": [vars(call) for call in self.pending],
                "private": self.private,
                "request": self.request,
                "start": self.start,
                "counts": [self.calls, self.fetches, self.capped],
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
        # States paused before provenance existed lack the newer keys: a private read
        # could not be told apart then, so such a turn counts as private (fails closed).
        calls, fetches, capped = data.get("counts", (0, 0, 0))
        return cls(
            messages=tuple(data["messages"]),
            rounds=int(data["rounds"]),
            tainted=bool(data["tainted"]),
            tools_used=tuple(str(name) for name in data["tools_used"]),
            pending=tuple(PendingCall(**call) for call in data["pending"]),
            private=bool(data.get("private", True)),
            request=str(data.get("request", "")),
            start=int(data.get("start", 0)),  # then no message was history's tool result
            calls=int(calls),
            fetches=int(fetches),
            capped=int(capped),
        )


@dataclass(frozen=True)
class NeedsConfirmation:
    text: str | None  # what the model said alongside its calls
    calls: tuple[PendingCall, ...]
    state: TurnState
    # Tokens up to the pause; the resumed run's outcome carries those after it.
    usage: Usage = field(default=Usage(), compare=False)


@dataclass(frozen=True)
class GaveUp:
    reason: str  # "max_rounds" | "llm_error" | "length" | "empty"
    text: str | None = None  # a final message for the user, when there is one
    llm_error_kind: str | None = None  # LLMCallError.kind for "llm_error"
    rounds: int = 0
    tools_used: tuple[str, ...] = ()
    usage: Usage = field(default=Usage(), compare=False)


TurnOutcome = Reply | NeedsConfirmation | GaveUp


class Model(Protocol):
    """What a turn asks the model through: ``LLM``, or the chat's client of the moment."""

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Completion: ...


async def run_turn(
    llm: Model,
    toolbox: Toolbox,
    ctx: ToolContext,
    messages: list[dict[str, Any]],
    *,
    max_rounds: int,
    limits: LimitsSettings | None = None,
) -> TurnOutcome:
    """Run a turn whose messages already hold the system prompt, history and new message.

    ``ctx.tainted`` says whether that input already holds content the requester did not
    write; ``ctx.request`` is the requester's own message.
    """
    state = TurnState(
        messages=tuple(messages),
        tainted=ctx.tainted,
        private=ctx.private,
        request=ctx.request,
        start=len(messages),
    )
    return await _timed(_Run(llm, toolbox, ctx, limits or LimitsSettings()), state, max_rounds)


async def resume_turn(
    llm: Model,
    toolbox: Toolbox,
    ctx: ToolContext,
    state: TurnState,
    results: dict[str, str],
    *,
    max_rounds: int,
    limits: LimitsSettings | None = None,
) -> TurnOutcome:
    """Continue a paused turn; ``results`` maps call ids to what happened to each pending call.

    A pending call missing from ``results`` counts as not confirmed. The model always gets
    at least one more round to report the outcome. A confirmed call that ran marks the
    turn like any other call of its kind (a confirmed fetch brings untrusted content).
    """
    answers = [
        _tool_message(call.call_id, results.get(call.call_id, prompts.NOT_CONFIRMED))
        for call in state.pending
    ]
    resumed = replace(state, messages=(*state.messages, *answers), pending=())
    for call in state.pending:
        tool = toolbox.get(call.tool_name)
        if call.call_id in results and tool is not None:
            resumed = _marked(resumed, tool)
    rounds = max(max_rounds, state.rounds + 1)
    return await _timed(_Run(llm, toolbox, ctx, limits or LimitsSettings()), resumed, rounds)


def _marked(state: TurnState, tool: Tool[Any]) -> TurnState:
    """The state after ``tool`` ran: its kind taints the rest of the turn."""
    return replace(
        state,
        tools_used=(*state.tools_used, tool.name),
        tainted=state.tainted or tool.brings_untrusted,
        private=state.private or tool.reads_private,
    )


@dataclass
class _Spent:
    """The tokens of this run's model requests, summed as they come back."""

    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class _Run:
    """What a turn runs with besides its state."""

    llm: Model
    toolbox: Toolbox
    ctx: ToolContext
    limits: LimitsSettings
    spent: _Spent = field(default_factory=_Spent)


async def _timed(run: _Run, state: TurnState, max_rounds: int) -> TurnOutcome:
    started = time.perf_counter()
    outcome = replace(await _drive(run, state, max_rounds), usage=run.spent.usage)
    rounds, tools = _summary(outcome)
    log.info(
        "turn.done",
        outcome=type(outcome).__name__,
        reason=outcome.reason if isinstance(outcome, GaveUp) else None,
        rounds=rounds,
        tools=",".join(tools),
        tokens=outcome.usage.total,
        estimated=outcome.usage.estimated,
        ms=round((time.perf_counter() - started) * 1000),
    )
    return outcome


def _summary(outcome: TurnOutcome) -> tuple[int, tuple[str, ...]]:
    if isinstance(outcome, NeedsConfirmation):
        return outcome.state.rounds, outcome.state.tools_used
    return outcome.rounds, outcome.tools_used


async def _drive(run: _Run, state: TurnState, max_rounds: int) -> TurnOutcome:
    specs = run.toolbox.specs_for(run.ctx.role, unattended=run.ctx.unattended)
    while state.rounds < max_rounds:
        try:
            completion = await run.llm.complete(list(state.messages), specs)
        except LLMError as exc:
            kind = exc.kind if isinstance(exc, LLMCallError) else "bad_response"
            return GaveUp(
                "llm_error", llm_error_kind=kind, rounds=state.rounds, tools_used=state.tools_used
            )
        run.spent.usage += completion.usage
        state = replace(state, rounds=state.rounds + 1)
        if not completion.tool_calls:
            return _final(completion, state, run.toolbox)
        state = await _run_round(run, state, completion)
        if state.pending:
            return NeedsConfirmation(completion.text, state.pending, state)
    summary = prompts.max_rounds_summary(state.rounds, state.tools_used)
    return GaveUp("max_rounds", summary, rounds=state.rounds, tools_used=state.tools_used)


def _final(completion: Completion, state: TurnState, toolbox: Toolbox) -> Reply | GaveUp:
    text = (completion.text or "").strip()
    if completion.finish_reason == "length":
        if not text:
            return GaveUp("length", rounds=state.rounds, tools_used=state.tools_used)
        text = f"{text}\n\n{_(prompts.TRUNCATED_NOTE)}"
    if not text:
        return GaveUp("empty", rounds=state.rounds, tools_used=state.tools_used)
    if state.capped:
        text = f"{text}\n\n{prompts.capped_note(state.capped)}"
    if state.tainted or state.private:  # the answer itself must not be a way out
        seen = "\n".join(str(message.get("content") or "") for message in state.messages)
        text = replies.defuse_unseen_links(text, seen)
    return Reply(
        text,
        state.rounds,
        state.tools_used,
        tool_results(state.messages[state.start :], toolbox),
        untrusted=state.tainted,
        private=state.private,
    )


def tool_results(messages: tuple[dict[str, Any], ...], toolbox: Toolbox) -> tuple[ToolOutput, ...]:
    """The tool results among a turn's own messages, each with its tool and its kind."""
    names = {
        call.get("id"): call.get("function", {}).get("name", "?")
        for message in messages
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or ()
        if isinstance(call, dict)
    }
    outputs = []
    for message in messages:
        if message.get("role") != "tool":
            continue
        name = str(names.get(message.get("tool_call_id"), "?"))
        tool = toolbox.get(name)
        outputs.append(
            ToolOutput(
                name,
                str(message.get("content", "")),
                untrusted=tool is not None and tool.brings_untrusted,
                private=tool is not None and tool.reads_private,
            )
        )
    return tuple(outputs)


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


async def _run_round(run: _Run, state: TurnState, completion: Completion) -> TurnState:
    calls = _normalise(completion.tool_calls, state)
    messages = [*state.messages, _assistant_message(completion.text, calls)]
    pending: list[PendingCall] = []
    capped_before = state.capped
    for index, (request, call) in enumerate(zip(completion.tool_calls, calls, strict=True)):
        state, cap = _counted(run, state, request.name, index)
        if cap is not None:
            messages.append(_tool_message(call.id, prompts.capped_result(cap)))
            continue
        ctx = replace(run.ctx, tainted=state.tainted, private=state.private, request=state.request)
        step = await _handle_call(run.toolbox, ctx, call, request)
        if isinstance(step, PendingCall):
            pending.append(step)
            continue
        text, tool = step
        messages.append(_tool_message(call.id, text))
        if tool is not None:
            state = _marked(state, tool)
    if state.capped and not capped_before:
        log.warning("turn.capped", capped=state.capped, calls=state.calls, fetches=state.fetches)
    return replace(state, messages=tuple(messages), pending=tuple(pending))


def _counted(run: _Run, state: TurnState, name: str, index: int) -> tuple[TurnState, str | None]:
    """Count one call against [limits]; the cap it is over (then it is not run), or None."""
    limits = run.limits
    tool = run.toolbox.get(name)
    fetch = tool is not None and tool.fetches
    cap = None
    if index >= limits.tool_calls_per_round:
        cap = f"{limits.tool_calls_per_round} tool calls per round"
    elif state.calls >= limits.tool_calls_per_turn:
        cap = f"{limits.tool_calls_per_turn} tool calls per turn"
    elif fetch and state.fetches >= limits.fetches_per_turn:
        cap = f"{limits.fetches_per_turn} fetches and searches per turn"
    if cap is not None:
        return replace(state, capped=state.capped + 1), cap
    return replace(state, calls=state.calls + 1, fetches=state.fetches + fetch), None


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
