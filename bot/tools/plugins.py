"""A deployment's own tools: ``[tools] modules`` names modules exporting ``make_tools(deps)``.

Such a module looks like this::

    from pydantic import BaseModel
    from bot.tools import Tool, ToolContext, roles_from
    from bot.tools.plugins import ToolDeps

    class TicketArgs(BaseModel):
        number: int

    def make_tools(deps: ToolDeps) -> list[Tool]:
        async def ticket_status(args: TicketArgs, ctx: ToolContext) -> str:
            async with deps.http.get(f"https://tickets.example/api/{args.number}") as r:
                return (await r.json())["status"]

        return [Tool(name="ticket_status", description="Status of a ticket.",
                     args=TicketArgs, run=ticket_status, roles=roles_from("user"))]

The tools join the same toolbox as the built-in ones: the role filter, the confirmation
gate and the ``[tools.<name>]`` overrides apply to them unchanged. A tool declares its kind
like a built-in one (``reads_private``, ``brings_untrusted``, ``egress``, ``changes_state``,
``egress_when``, ``quoted_arg``; docs/threat-model.md): a tool that calls a remote service
with its arguments is ``egress``, one whose output is someone else's text
``brings_untrusted``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from pydantic import BaseModel

from bot.clock import Clock
from bot.errors import ConfigError
from bot.tools import KINDS, ROLE_ORDER, TOOL_NAME, Tool
from bot.tools.filearea import FileArea
from bot.tools.web import HttpFetcher

log = structlog.get_logger(__name__)

FIELD = "tools.modules"
MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", re.ASCII)
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class ToolDeps:
    """What a deployment's tool may use; deliberately no settings and no secrets.

    A module that needs a credential reads its own (an environment variable, a file).
    """

    http: aiohttp.ClientSession  # shared session, proxies ignored, for services you trust
    fetcher: HttpFetcher  # the SSRF-guarded GET of http_fetch, for URLs that come from chat
    files: FileArea  # the sandboxed [tools.files] root (blocking: call via asyncio.to_thread)
    clock: Clock  # the injected clock: clock.now() is epoch seconds
    timezone: str  # the [chat] timezone


def _problem(module: str, reason: str) -> ConfigError:
    one_line = " ".join(reason.split())[:MAX_REASON_CHARS]
    return ConfigError([(FIELD, f"{module}: {one_line}")])


def load_plugin_tools(
    modules: Sequence[str], deps: ToolDeps, *, taken: Iterable[str] = ()
) -> list[Tool[Any]]:
    """Every module's tools, checked; a ConfigError names the first module that is wrong."""
    names = set(taken)
    tools: list[Tool[Any]] = []
    for module in modules:
        for tool in _tools_of(module, deps):
            if tool.name in names:
                raise _problem(module, f"tool {tool.name!r} is already declared")
            names.add(tool.name)
            tools.append(tool)
        log.info("tools.module_loaded", module=module)
    return tools


def _tools_of(module: str, deps: ToolDeps) -> list[Tool[Any]]:
    if not MODULE_PATH.match(module):
        raise _problem(module, "not a Python module path like mycorp.talktools")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise _problem(module, "module not found (is it installed?)") from None
        raise _problem(module, f"import failed: {exc}") from None
    except Exception as exc:  # any import failure is a config problem here
        raise _problem(module, f"import failed: {type(exc).__name__}: {exc}") from None
    make = getattr(loaded, "make_tools", None)
    if not callable(make):
        raise _problem(module, "has no make_tools(deps) function")
    try:
        declared = make(deps)
    except Exception as exc:  # reported as one config line, not a traceback
        raise _problem(module, f"make_tools failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(declared, list | tuple):
        raise _problem(module, "make_tools must return a list of bot.tools.Tool")
    for tool in declared:
        _check_tool(module, tool)
    return list(declared)


def _check_tool(module: str, tool: Any) -> None:
    if not isinstance(tool, Tool):
        raise _problem(module, f"make_tools returned {type(tool).__name__}, not a Tool")
    if not TOOL_NAME.match(tool.name):
        raise _problem(module, f"tool name {tool.name!r} must match {TOOL_NAME.pattern}")
    if not (isinstance(tool.args, type) and issubclass(tool.args, BaseModel)):
        raise _problem(module, f"{tool.name}: args must be a pydantic model class")
    if not isinstance(tool.roles, frozenset) or not tool.roles <= set(ROLE_ORDER):
        raise _problem(module, f"{tool.name}: roles must be a frozenset of {ROLE_ORDER}")
    if not callable(tool.run):
        raise _problem(module, f"{tool.name}: run must be an async function")
    for kind in KINDS:
        if not isinstance(getattr(tool, kind), bool):
            raise _problem(module, f"{tool.name}: {kind} must be True or False")
    for rule in ("egress_when", "quoted_arg", "confirm_when"):
        if getattr(tool, rule) is not None and not callable(getattr(tool, rule)):
            raise _problem(module, f"{tool.name}: {rule} must be a function or None")
