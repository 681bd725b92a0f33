"""The configured MCP servers as one set (started, reconfigured by ``!reload``, closed),
and ``talkbot check``'s probe of one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.clock import Clock, SystemClock
from bot.config import McpServerSettings
from bot.tools import Tool
from bot.tools.mcp.server import McpServer, OnChange
from bot.tools.sources import ServerState


@dataclass
class McpTools:
    """Every configured server; ``on_change`` runs when the set of tools may have changed."""

    clock: Clock
    on_change: OnChange
    servers: dict[str, McpServer] = field(default_factory=dict)

    def start(self, settings: Sequence[McpServerSettings]) -> None:
        for server_settings in settings:
            self._add(server_settings)

    def _add(self, settings: McpServerSettings) -> None:
        server = McpServer(settings, self.clock, self.on_change)
        self.servers[settings.name] = server
        server.start()

    async def reconfigure(self, settings: Sequence[McpServerSettings]) -> None:
        """``!reload``: servers removed stop, added ones start, changed ones restart."""
        wanted = {server.name: server for server in settings}
        for name, running in list(self.servers.items()):
            if wanted.get(name) != running.settings:
                del self.servers[name]
                await running.stop()
        for name, server_settings in wanted.items():
            if name not in self.servers:
                self._add(server_settings)
        self.on_change()

    def tools(self) -> list[Tool[Any]]:
        return [tool for server in self.servers.values() for tool in server.tools()]

    def states(self) -> list[ServerState]:
        return [server.state() for server in self.servers.values()]

    async def settled(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until each server's first attempt has ended."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for server in list(self.servers.values()):
                    await server.settled()

    async def aclose(self) -> None:
        servers, self.servers = list(self.servers.values()), {}
        await asyncio.gather(*(server.stop() for server in servers), return_exceptions=True)


async def probe(settings: McpServerSettings, timeout_s: float = 20.0) -> str:
    """For ``talkbot check``: connect once, list the tools, say what would be offered."""
    changed = asyncio.Event()
    server = McpServer(settings, SystemClock(), changed.set)
    server.start()
    try:
        async with asyncio.timeout(timeout_s):
            await server.settled()
        state = server.state()
        if state.state != "ready":
            return f"cannot connect: {state.reason}"
        tools = server.tools()
        asking = sum(1 for tool in tools if tool.confirm)
        return f"connected, {len(tools)} tools offered ({asking} ask first)"
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    finally:
        await server.stop()
