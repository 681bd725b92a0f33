"""One MCP server: its connection, owned by one task that connects, lists the tools,
waits until the server goes away and retries with a backoff; its tools and its state."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import anyio
import jsonschema
import structlog
from mcp import Client, StdioServerParameters
from mcp import types as mcp_types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from bot import USER_AGENT
from bot.clock import Clock
from bot.config import McpServerSettings, strip_credentials
from bot.errors import ToolError
from bot.tools import Tool, ToolContext
from bot.tools.mcp.convert import (
    arguments_model,
    exposed_name,
    kinds_of,
    offered_roles,
    offered_schema,
    result_text,
    selected,
)
from bot.tools.mcp.transport import stderr_to_log, watching
from bot.tools.sources import ServerState, SourceState

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 30.0
BACKOFF_S = (1.0, 60.0)  # the first wait before connecting again, and the longest
STABLE_S = 60.0  # connected this long: the next failure waits the first backoff again
MAX_DESCRIPTION_CHARS = 1024
# The protocol as the published servers speak it (2025 revisions): notifications come
# through the message handler, and connecting needs no discovery probe.
MODE: Literal["legacy"] = "legacy"

State = SourceState
OnChange = Callable[[], None]


def _reason(exc: BaseException) -> str:
    """One line for an error, from the innermost ones of an exception group."""
    leaves = _leaves(exc)
    first = next((e for e in leaves if not isinstance(e, asyncio.CancelledError)), leaves[0])
    text = str(first) or type(first).__name__
    return strip_credentials(" ".join(f"{type(first).__name__}: {text}".split()))[:300]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


class McpServer:
    """One configured server: its connection, its tools, its state."""

    def __init__(self, settings: McpServerSettings, clock: Clock, on_change: OnChange) -> None:
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._client: Client | None = None
        self._listed: tuple[mcp_types.Tool, ...] = ()
        self._tools: tuple[Tool[Any], ...] = ()
        self._lost_reason = ""
        self._state: State = "connecting"
        self._since = clock.now()
        self._reason = ""
        self._retry_at: float | None = None
        self._restarts = 0
        self._wake = asyncio.Event()  # connection lost, tools changed, or stop
        self._lost = False
        self._refresh = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()  # set once the first attempt ended either way
        self._connected_at: float | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._set("stopped", "")

    async def settled(self) -> None:
        """Return once the first attempt to connect has ended, either way."""
        await self._attempted.wait()

    def state(self) -> ServerState:
        retry = None
        if self._retry_at is not None:
            retry = max(0.0, self._retry_at - time.monotonic())
        return ServerState(
            name=self.name,
            transport=self.settings.transport,
            state=self._state,
            since=self._since,
            reason=self._reason,
            tools=tuple(tool.name for tool in self.tools()),
            retry_in_s=retry,
            restarts=self._restarts,
        )

    def tools(self) -> list[Tool[Any]]:
        """The server's tools as talkbot tools; none while it is not connected."""
        return list(self._tools) if self._state == "ready" else []

    def _use(self, listed: tuple[mcp_types.Tool, ...]) -> None:
        """The tools as listed, made talkbot tools once per listing (a turn that validated
        arguments with one keeps running them with the same)."""
        self._listed = listed
        self._tools = tuple(tool for item in listed if (tool := self._tool(item)) is not None)

    def _tool(self, listed: mcp_types.Tool) -> Tool[Any] | None:
        settings = self.settings
        if not selected(settings, listed.name):
            return None
        name = exposed_name(settings.name, listed.name)
        if name is None:
            log.warning("mcp.tool_skipped", server=self.name, tool=listed.name[:80], why="name")
            return None
        try:
            args = arguments_model(listed.input_schema)
        except jsonschema.SchemaError as exc:
            log.warning("mcp.tool_skipped", server=self.name, tool=name, why=exc.message[:200])
            return None
        kinds = kinds_of(listed.annotations)
        described = " ".join((listed.description or listed.title or listed.name).split())
        return Tool(
            name=name,
            description=f"{described[:MAX_DESCRIPTION_CHARS]} (from the MCP server {self.name})",
            args=args,
            run=partial(self._run_tool, listed.name),
            roles=offered_roles(settings.roles),
            confirm=settings.confirm == "all" or (settings.confirm == "writes" and kinds.writes),
            timeout_s=settings.timeout_s + 5,  # the call's own timeout answers first
            reads_private=not kinds.open_world,
            brings_untrusted=True,
            egress=kinds.writes or kinds.open_world,
            changes_state=kinds.writes,
            schema=offered_schema(listed.input_schema),
        )

    async def _run_tool(self, tool: str, args: BaseModel, _ctx: ToolContext) -> str:
        client = self._client
        if client is None or self._state != "ready":
            raise ToolError(f"the MCP server {self.name!r} is not connected; try again later")
        try:
            result = await client.call_tool(
                tool, args.model_dump(mode="json"), read_timeout_seconds=self.settings.timeout_s
            )
        except MCPError as exc:
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise ToolError(
                    f"the MCP server {self.name!r} did not answer within "
                    f"{self.settings.timeout_s:g} s"
                ) from None
            if exc.code != mcp_types.CONNECTION_CLOSED:  # the server answered: an error
                raise ToolError(
                    f"the MCP server {self.name!r} refused the call: {exc.error.message[:500]}"
                ) from None
            self.connection_lost(_reason(exc))
            raise ToolError(
                f"the MCP server {self.name!r} stopped during the call ({exc.error.message[:200]});"
                " talkbot restarts it, try again in a moment"
            ) from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self.connection_lost(_reason(exc))
            raise ToolError(
                f"the MCP server {self.name!r} cannot be reached; talkbot reconnects"
            ) from None
        return result_text(self.name, tool, result)

    # -- the connection's owner task ----------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_S[0]
        while not self._stopping:
            if self._state != "failed":  # a retry shows the failure it retries until it works
                self._set("connecting", "")
            self._connected_at = None
            try:
                await self._connection()
                reason = self._lost_reason or "the connection ended"
            except Exception as exc:
                reason = _reason(exc)
            self._client = None
            self._use(())
            self._attempted.set()
            if self._stopping:
                break
            connected_at = self._connected_at
            if connected_at is not None and time.monotonic() - connected_at >= STABLE_S:
                backoff = BACKOFF_S[0]
            self._restarts += 1
            self._retry_at = time.monotonic() + backoff
            self._set("failed", reason)
            log.warning("mcp.server_failed", server=self.name, reason=reason, retry_in_s=backoff)
            self._on_change()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped(), backoff)
            self._retry_at = None
            backoff = min(BACKOFF_S[1], backoff * 2)
        self._on_change()

    async def _stopped(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    async def _connection(self) -> None:
        """Connect, list the tools, then return when the server is gone (or on stop)."""
        self._lost = self._refresh = False
        self._lost_reason = ""
        async with contextlib.AsyncExitStack() as stack:
            transport = await self._transport(stack)
            client = Client(transport, mode=MODE, message_handler=self._on_message)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await stack.enter_async_context(client)
                self._use(await _list_all(client))
            self._client = client
            self._set("ready", "")
            log.info("mcp.server_ready", server=self.name, tools=len(self._listed))
            self._attempted.set()
            self._connected_at = time.monotonic()
            self._on_change()
            while not (self._lost or self._stopping):
                self._wake.clear()
                await self._wake.wait()
                if self._refresh and not self._lost and not self._stopping:
                    self._refresh = False
                    self._use(await _list_all(client))
                    log.info("mcp.tools_changed", server=self.name, tools=len(self._listed))
                    self._on_change()

    async def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        settings = self.settings
        if settings.transport == "http":
            headers = {k: v.get_secret_value() for k, v in settings.headers.items()}
            if not any(name.lower() == "user-agent" for name in headers):
                headers["User-Agent"] = USER_AGENT  # not httpx's name; the config's wins
            http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
            return watching(
                streamable_http_client(settings.url, http_client=http), self.connection_lost
            )
        env = {k: v.get_secret_value() for k, v in settings.env.items()}
        params = StdioServerParameters(command=settings.command, args=list(settings.args), env=env)
        errlog = await stack.enter_async_context(stderr_to_log(self.name))
        return watching(stdio_client(params, errlog=errlog), self.connection_lost)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._refresh = True
            self._wake.set()
        elif isinstance(message, Exception):
            log.info("mcp.transport_error", server=self.name, error=_reason(message))

    def connection_lost(self, reason: str) -> None:
        if not self._lost and not self._stopping:
            log.warning("mcp.connection_lost", server=self.name, reason=reason)
            self._lost_reason = reason
        self._lost = True
        self._wake.set()

    def _set(self, state: State, reason: str) -> None:
        if state != self._state or reason != self._reason:
            self._since = self._clock.now()
        self._state, self._reason = state, reason


async def _list_all(client: Client) -> tuple[mcp_types.Tool, ...]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _page in range(100):  # a server that pages forever gets the first 100 pages
        page = await client.list_tools(cursor=cursor, cache_mode="refresh")
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tuple(tools)
