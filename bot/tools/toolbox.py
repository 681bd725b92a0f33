"""The tool abstraction and the Toolbox: role filtering, argument validation, safe execution."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from bot.access import ROLES, at_least
from bot.config import Approver, Role, ToolsSettings
from bot.errors import ToolError

log = structlog.get_logger(__name__)

ROLE_ORDER: tuple[Role, ...] = ROLES  # lowest to highest, as access defines them
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_RESULT_CHARS = 8000
MAX_ARGS_CHARS = 100_000
GENERIC_FAILURE = "the tool failed"
KINDS = ("reads_private", "brings_untrusted", "egress", "changes_state")
NOT_ALLOWED = "not allowed: this tool is not available to you"

A = TypeVar("A", bound=BaseModel)


role_at_least = at_least


def roles_from(minimum: Role) -> frozenset[Role]:
    """Every role at or above ``minimum``: ``roles_from("user") == {"user", "admin"}``."""
    return frozenset(role for role in ROLE_ORDER if role_at_least(role, minimum))


class ToolRefusedError(ToolError):
    """The tool is unknown or the requester's role may not use it."""


@dataclass(frozen=True)
class ToolContext:
    """Who a tool runs for, and where. Built per turn by the caller."""

    requester: str  # actor id, e.g. "users/alice"
    role: Role
    room: str  # room token
    now: Callable[[], float]  # epoch seconds, from the injected clock
    timezone: str = "UTC"
    unattended: bool = False  # scheduled turn: nobody can confirm anything
    # Provenance of the turn's input so far (docs/threat-model.md, "the lethal combination"):
    tainted: bool = False  # it holds content the requester did not write (untrusted)
    private: bool = False  # a reads_private tool ran in this turn
    request: str = ""  # the requester's own current message, as they wrote it


@dataclass(frozen=True)
class ToolResult:
    text: str
    ok: bool = True


@dataclass(frozen=True)
class Tool(Generic[A]):
    """A tool is data plus policy; declared next to its code."""

    name: str
    description: str
    args: type[A]
    run: Callable[[A, ToolContext], Awaitable[str]]
    roles: frozenset[Role]
    confirm: bool = False
    approver: Approver = "requester"
    timeout_s: float = 30
    # Its kind, which the gate decides by (Toolbox.needs_confirmation); [tools.<name>] may
    # add kinds, never remove them.
    reads_private: bool = False  # its output is private data: files, logs, other rooms
    brings_untrusted: bool = False  # its output is outside content: it taints the turn
    egress: bool = False  # it sends data out of the room (its arguments leave)
    changes_state: bool = False  # it changes something that outlives the turn
    # Egress for some arguments only (schedule_add into another room, a prompt job).
    egress_when: Callable[[A, ToolContext], bool] | None = None
    # The argument that carries nothing injected when the requester's own message holds
    # it verbatim (http_fetch's url, web_search's query): then no yes is needed for it,
    # unless the turn read private data.
    quoted_arg: Callable[[A], str] | None = None
    confirm_when: Callable[[A, ToolContext], bool] | None = None
    # Refuses (ToolError) a call that could never run, before anyone is asked to confirm it.
    precheck: Callable[[A, ToolContext], Awaitable[None]] | None = None
    # The arguments' JSON schema as offered, when ``args`` does not describe it itself (an
    # MCP server's inputSchema; ``args`` validates against it).
    schema: dict[str, Any] | None = None

    @property
    def untrusted_output(self) -> bool:
        """The former name of ``brings_untrusted``."""
        return self.brings_untrusted

    @property
    def fetches(self) -> bool:
        """A call that reaches outside and brings content back: counted by fetches_per_turn."""
        return self.egress and self.brings_untrusted

    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments, shaped for OpenAI function calling."""
        if self.schema is not None:
            return dict(self.schema)
        schema: dict[str, Any] = _function_schema(self.args.model_json_schema())
        schema.setdefault("properties", {})
        return schema

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters(),
            },
        }


def _function_schema(node: Any) -> Any:
    """Drop pydantic's titles and close every object (additionalProperties: false)."""
    if isinstance(node, list):
        return [_function_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _function_schema(sub) for name, sub in value.items()}
        else:
            out[key] = _function_schema(value)
    if out.get("type") == "object":
        out.setdefault("additionalProperties", False)
    return out


def describe_validation_error(exc: ValidationError) -> str:
    """A short, model-readable list of what is wrong with the arguments."""
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        problems.append(f"{where}: {error['msg']}")
    return "invalid arguments: " + "; ".join(problems)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def parse_arguments(raw: str) -> dict[str, Any]:
    """Strict JSON object from a model's argument string; '' means no arguments."""
    if len(raw) > MAX_ARGS_CHARS:
        raise ToolError(f"arguments are too long ({len(raw)} characters)")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ToolError(f"arguments are not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ToolError("arguments must be a JSON object")
    return value


def canonical_json(args: BaseModel) -> str:
    """The stable form of validated arguments: what is shown, stored and executed."""
    return json.dumps(
        args.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def cap_text(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[truncated: {len(text) - limit} more characters]"


def _with_policy(tool: Tool[Any], settings: ToolsSettings) -> Tool[Any] | None:
    policy = settings.policy(tool.name)
    if policy.enabled is False:
        return None
    changes: dict[str, Any] = {}
    if policy.roles is not None:
        changes["roles"] = frozenset(policy.roles)
    if policy.confirm is not None:
        changes["confirm"] = policy.confirm
    if policy.approver is not None:
        changes["approver"] = policy.approver
    for kind in KINDS:
        if getattr(policy, kind):  # only ever adds a kind (the config model refuses false)
            changes[kind] = True
    return replace(tool, **changes) if changes else tool


def normalised(text: str) -> str:
    """Whitespace collapsed, case folded: how a quoted argument is compared."""
    return " ".join(text.split()).casefold()


def quoted_by_requester(tool: Tool[Any], args: BaseModel, ctx: ToolContext) -> bool:
    """The call's quoted argument appears verbatim in the requester's own message."""
    if tool.quoted_arg is None:
        return False
    value = normalised(tool.quoted_arg(args))
    return bool(value) and value in normalised(ctx.request)


class Toolbox:
    """The tools of this deployment, with the config's policy applied; fails closed."""

    def __init__(
        self,
        tools: Iterable[Tool[Any]],
        settings: ToolsSettings | None = None,
        *,
        max_result_chars: int = MAX_RESULT_CHARS,
    ) -> None:
        settings = settings or ToolsSettings()
        self._tools: dict[str, Tool[Any]] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._max_result_chars = max_result_chars
        for declared in tools:
            if not TOOL_NAME.match(declared.name):
                raise ValueError(f"tool name {declared.name!r} must match {TOOL_NAME.pattern}")
            if declared.name in self._tools:
                raise ValueError(f"tool {declared.name!r} is declared twice")
            tool = _with_policy(declared, settings)
            if tool is not None:
                self._tools[tool.name] = tool
                self._specs[tool.name] = tool.spec()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def get(self, name: str) -> Tool[Any] | None:
        return self._tools.get(name)

    def specs_for(self, role: Role, *, unattended: bool = False) -> list[dict[str, Any]]:
        """OpenAI ``tools`` for this role; unattended turns are not offered confirm tools."""
        return [
            self._specs[tool.name]
            for tool in self._tools.values()
            if role in tool.roles and not (unattended and tool.confirm)
        ]

    def authorize(self, name: str, ctx: ToolContext) -> Tool[Any]:
        """The tool if ctx's role may use it; otherwise audit-log and raise ToolRefusedError."""
        tool = self._tools.get(name)
        if tool is not None and ctx.role in tool.roles:
            return tool
        reason = "unknown_tool" if tool is None else "role"
        log.warning(
            "tool.refused",
            tool=name[:64],
            reason=reason,
            actor=ctx.requester,
            role=ctx.role,
            room=ctx.room,
        )
        if tool is None:
            raise ToolRefusedError(f"unknown tool {name[:64]!r}")
        raise ToolRefusedError(NOT_ALLOWED)

    def validate(self, name: str, raw_args: str) -> BaseModel:
        """Parse and validate a model's argument string; ToolError says what is wrong."""
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(f"unknown tool {name[:64]!r}")
        data = parse_arguments(raw_args)
        try:
            args: BaseModel = tool.args.model_validate(data)
        except ValidationError as exc:
            raise ToolError(describe_validation_error(exc)) from None
        return args

    async def precheck(self, tool: Tool[Any], args: BaseModel, ctx: ToolContext) -> None:
        """ToolError when this call would be refused anyway; no prompt for it then."""
        if tool.precheck is not None:
            await tool.precheck(args, ctx)

    def needs_confirmation(self, tool: Tool[Any], args: BaseModel, ctx: ToolContext) -> bool:
        """Decided from the tool, the policy and the turn's provenance, never from what the
        model says: ``confirm``, ``confirm_when``, and the lethal combination."""
        if tool.confirm or _rule(tool, tool.confirm_when, args, ctx):
            return True
        return self.is_way_out(tool, args, ctx)

    def is_way_out(self, tool: Tool[Any], args: BaseModel, ctx: ToolContext) -> bool:
        """An egress call after untrusted or private content entered the turn.

        In a private turn (a file, the logs... read in this turn) every egress needs a yes.
        In an untrusted one, only what the requester did not quote in their own message.
        """
        if not (ctx.private or ctx.tainted):
            return False
        if not (tool.egress or _rule(tool, tool.egress_when, args, ctx)):
            return False
        return ctx.private or not quoted_by_requester(tool, args, ctx)

    async def execute(
        self, name: str, args: BaseModel, ctx: ToolContext, *, confirmed: bool = False
    ) -> ToolResult:
        """Run one call; every expected failure and every tool bug becomes a failed result.

        ``confirmed`` is passed only by the confirmation handler after a human said yes.
        """
        try:
            tool = self.authorize(name, ctx)
        except ToolRefusedError as exc:
            return ToolResult(str(exc), ok=False)
        if not isinstance(args, tool.args):
            return ToolResult("invalid arguments for this tool", ok=False)
        if not confirmed and self.needs_confirmation(tool, args, ctx):
            log.warning("tool.refused", tool=name, reason="unconfirmed", actor=ctx.requester)
            return ToolResult("refused: this action needs a confirmation first", ok=False)
        started = time.perf_counter()
        result = await self._run(tool, args, ctx)
        log.info(
            "tool.done",
            tool=name,
            ok=result.ok,
            ms=round((time.perf_counter() - started) * 1000),
        )
        return ToolResult(cap_text(result.text, self._max_result_chars), result.ok)

    async def _run(self, tool: Tool[Any], args: BaseModel, ctx: ToolContext) -> ToolResult:
        try:
            async with asyncio.timeout(tool.timeout_s):
                text = await tool.run(args, ctx)
        except TimeoutError:
            log.warning("tool.timeout", tool=tool.name, timeout_s=tool.timeout_s)
            return ToolResult(f"the tool timed out after {tool.timeout_s:g} s", ok=False)
        except ToolError as exc:
            return ToolResult(str(exc) or GENERIC_FAILURE, ok=False)
        except ValidationError as exc:
            return ToolResult(describe_validation_error(exc), ok=False)
        except Exception:
            log.exception("tool.crashed", tool=tool.name)
            return ToolResult(GENERIC_FAILURE, ok=False)
        return ToolResult(text)


def _rule(
    tool: Tool[Any],
    rule: Callable[[Any, ToolContext], bool] | None,
    args: BaseModel,
    ctx: ToolContext,
) -> bool:
    """A tool's argument-dependent rule; a rule that crashes says yes (fails closed)."""
    if rule is None:
        return False
    try:
        return bool(rule(args, ctx))
    except Exception:
        log.exception("tool.confirm_rule_failed", tool=tool.name)
        return True
