"""The configured tools: the built-in ones and the [tools] modules, on what the daemon gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.clock import Clock
from bot.config import Settings
from bot.logs import LogRing
from bot.scheduler import Scheduler
from bot.talk.poster import Poster
from bot.tools import Tool
from bot.tools.clock import make_clock_tools
from bot.tools.filearea import FileArea
from bot.tools.files import make_file_tools
from bot.tools.ops import make_ops_tools
from bot.tools.plugins import ToolDeps as PluginDeps
from bot.tools.plugins import load_plugin_tools
from bot.tools.schedule import make_schedule_tools
from bot.tools.talk import RoomDirectory, make_talk_tools
from bot.tools.web import HttpFetcher, make_fetch_tools
from bot.tools.web_search import make_search_tools


@dataclass(frozen=True)
class BuiltinToolDeps:
    """What tools need from the running daemon (None of it exists before build_parts)."""

    scheduler: Scheduler
    rooms: RoomDirectory
    poster: Poster
    session: aiohttp.ClientSession  # shared: web_search and deployment tools
    fetcher: HttpFetcher  # http_fetch's own guarded connector
    ring: LogRing
    clock: Clock
    restart: Callable[[], None]
    admin_room: Callable[[], str]


def build_tools(settings: Settings, deps: BuiltinToolDeps | None = None) -> list[Tool[Any]]:
    """Built-in tools, then [tools] modules; ConfigError when a module is broken."""
    tools: list[Tool[Any]] = [*make_clock_tools(), *make_file_tools(settings.tools.files)]
    if deps is not None:
        tools += make_schedule_tools(deps.scheduler, deps.rooms)
        tools += make_talk_tools(deps.poster, deps.rooms)
        tools += make_search_tools(settings.tools.web_search, deps.session)
        tools += make_fetch_tools(deps.fetcher)
        tools += make_ops_tools(deps.ring, deps.restart, admin_room=deps.admin_room)
        plugin_deps = PluginDeps(
            http=deps.session,
            fetcher=deps.fetcher,
            files=FileArea(settings.tools.files),
            clock=deps.clock,
            timezone=settings.chat.timezone,
        )
        names = [tool.name for tool in tools]
        tools += load_plugin_tools(settings.tools.modules, plugin_deps, taken=names)
    return tools
