"""``!reload``: the settings swapped in place, and the toolbox that follows them."""

from __future__ import annotations

from typing import Any

import structlog

from bot.config import Settings
from bot.errors import ConfigError
from bot.i18n import _
from bot.metered import MeteredLLM, MeteredToolbox
from bot.preflight import log_warnings, validate_deployment
from bot.runtime import Parts, Runtime, routing_policy
from bot.tools import Tool, Toolbox
from bot.toolset import build_tools

log = structlog.get_logger(__name__)

# Sections a running process cannot change in place.
RESTART_SECTIONS = ("server", "nextcloud", "storage")


async def reload_settings(runtime: Runtime) -> str:
    """Re-read the config; a bad one is refused and the running one kept."""
    if runtime.load_settings is None:
        return _("Reload is not available: this process was not started from a config file.")
    try:
        new = runtime.load_settings()
        warnings = await validate_deployment(new)  # as at start: no half-applied reload
    except ConfigError as exc:
        log.warning("config.reload_refused", reason=exc.one_line())
        return _("Config not reloaded, the running one stays. {reason}").format(
            reason=exc.one_line()
        )
    log_warnings(warnings)
    old, parts = runtime.settings, runtime.running
    try:
        own_tools = rebuilt_tools(runtime, old, new)
    except ConfigError as exc:
        log.warning("config.reload_refused", reason=exc.one_line())
        return _("Config not reloaded, the running one stays. {reason}").format(
            reason=exc.one_line()
        )
    parts.access.reconfigure(new.access)
    parts.directory.refresh_all()  # groups may have been remapped: ask Nextcloud again
    parts.history.reconfigure(new.chat)
    parts.router.policy = routing_policy(new)
    parts.router.greeting = new.chat.greeting
    parts.own_tools = own_tools
    old_llm = parts.llm
    if new.llm != old.llm:
        parts.llm = MeteredLLM(new.llm, runtime.metrics)
    runtime.settings = new
    parts.toolbox = assemble_toolbox(runtime, parts)
    parts.chat.reconfigure(new.chat, new.llm, llm=parts.llm, limits=new.limits)
    if old_llm is not parts.llm:  # only once no round can pick it up any more
        await old_llm.aclose()
    if parts.mcp is not None:  # servers removed stop, added ones start
        await parts.mcp.reconfigure(new.mcp.servers)
    else:
        use_mcp_servers(runtime, parts, new)
    for hook in runtime.reload_hooks:
        await hook(new)
    log.info("config.reloaded")
    later = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
    note = (
        _(" Changes to {sections} take effect after `!restart`.").format(sections=", ".join(later))
        if later
        else ""
    )
    return _("Config reloaded.{note}").format(note=note)


async def reload_everywhere(runtime: Runtime, parts: Parts) -> str:
    """``!reload``: here, then (once it took) on the other replicas, each from its own file."""
    before = runtime.settings
    text = await reload_settings(runtime)
    if parts.coordinator.shared and runtime.settings is not before:
        await parts.store.bump_revision("config")
        text += _(" The other replicas reload theirs now.")
    return text


def rebuilt_tools(runtime: Runtime, old: Settings, new: Settings) -> tuple[Tool[Any], ...]:
    """The configured tools for reloaded settings: the running ones when [tools] did not
    change; ConfigError (and nothing changed) when the new ones cannot be built."""
    parts = runtime.running
    if new.tools == old.tools:
        return parts.own_tools
    fetcher = parts.tool_deps.fetcher
    fetcher.reconfigure(new.tools.http_fetch)
    try:
        tools = (*build_tools(new, parts.tool_deps), *runtime.extra_tools)
        MeteredToolbox(tools, new.tools, metrics=runtime.metrics)  # the policy applies
    except ConfigError:
        fetcher.reconfigure(old.tools.http_fetch)
        raise
    return tools


def assemble_toolbox(runtime: Runtime, parts: Parts) -> Toolbox:
    """The configured tools and the MCP servers' tools of the moment, under [tools]."""
    taken = {tool.name for tool in parts.own_tools}
    remote = [tool for tool in (parts.mcp.tools() if parts.mcp else []) if tool.name not in taken]
    return MeteredToolbox(
        [*parts.own_tools, *remote], runtime.settings.tools, metrics=runtime.metrics
    )


def use_mcp_servers(runtime: Runtime, parts: Parts, settings: Settings) -> None:
    """Connect the ``[[mcp.servers]]`` in the background (the SDK is imported only when
    some are configured); the toolbox follows their tools as they come and go."""
    if not settings.mcp.servers or parts.mcp is not None:
        return
    from bot.tools.mcp import McpTools  # noqa: PLC0415 - optional, and 0.4 s to import

    def tools_changed() -> None:
        if runtime.parts is not parts:
            return  # stopping
        parts.toolbox = assemble_toolbox(runtime, parts)  # the next turn offers these

    parts.mcp = McpTools(runtime.clock, tools_changed)
    parts.mcp.start(settings.mcp.servers)
