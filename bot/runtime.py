"""What the running daemon is: its settings, its parts, and how it should end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from bot import i18n, replies
from bot.access import Access
from bot.agent.history import History
from bot.agent.llm import LLM
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.directory import Directory
from bot.dispatch import Dispatcher
from bot.errors import TalkError
from bot.handlers import Router
from bot.handlers.admin import AdminCommands
from bot.handlers.approvals import Approvals
from bot.handlers.chat import ChatHandler
from bot.logs import LogRing, Redactor
from bot.metrics import Metrics
from bot.replicas import Coordinator
from bot.routing import RoutingPolicy
from bot.scheduler import Scheduler
from bot.store import Store, StoreHealth
from bot.talk.client import TalkClient
from bot.talk.events import bot_actor_id
from bot.talk.poster import Poster
from bot.tools import Tool, Toolbox
from bot.tools.netguard import AddressPolicy
from bot.toolset import BuiltinToolDeps
from bot.webhook import WebhookReceiver

if TYPE_CHECKING:
    from bot.tools.mcp import McpTools

log = structlog.get_logger(__name__)

EXIT_RESTART = 75  # EX_TEMPFAIL: systemd's Restart=on-failure starts us again


@dataclass
class Runtime:
    """What the running daemon is: settings, its parts, and how it should end."""

    settings: Settings
    clock: Clock
    ring: LogRing
    redactor: Redactor
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = 0.0
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int = 0
    parts: Parts | None = None
    # How !reload reads the config again (the CLI sets it to re-read the file).
    load_settings: Callable[[], Settings] | None = None
    # Called with the new settings after a successful reload, by parts that keep state.
    reload_hooks: list[Callable[[Settings], Awaitable[None]]] = field(default_factory=list)
    # Tools added to the configured ones: the composition root's injection point (tests,
    # embedding); ordinary deployments use [tools] modules instead.
    extra_tools: tuple[Tool[Any], ...] = ()
    # Where http_fetch may connect; None: public addresses on [tools.http_fetch] ports.
    # Tests inject a loopback allow-list here, nothing else should.
    fetch_policy: AddressPolicy | None = None

    def request_stop(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code
        self.stop_requested.set()

    @property
    def running(self) -> Parts:
        if self.parts is None:
            raise RuntimeError("the daemon is not running")
        return self.parts


@dataclass
class Parts:
    store: Store
    session: aiohttp.ClientSession
    talk: TalkClient
    poster: Poster
    llm: LLM
    access: Access
    toolbox: Toolbox
    history: History
    chat: ChatHandler
    router: Router
    approvals: Approvals
    admin: AdminCommands
    dispatcher: Dispatcher
    webhook: WebhookReceiver
    scheduler: Scheduler
    tool_deps: BuiltinToolDeps
    coordinator: Coordinator
    directory: Directory
    store_notices: StoreNotices
    # The configured tools (built-in, [tools] modules, a test's own); the toolbox is these
    # and the MCP servers' tools of the moment.
    own_tools: tuple[Tool[Any], ...] = ()
    mcp: McpTools | None = None
    housekeeping: asyncio.Task[None] | None = None
    # Each resource's teardown, registered as it was opened (build_parts); close_parts
    # stops the work first, then closes these in reverse order.
    resources: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)


class StoreNotices:
    """Tells the admin room when the store stops committing and when it can again (H04):
    one notice per outage and one when it is over; owns the tasks that post them."""

    def __init__(
        self,
        poster: Poster,
        admin_room: Callable[[], str],
        language: Callable[[], str] = lambda: i18n.DEFAULT,  # [chat] language
    ) -> None:
        self._poster = poster
        self._admin_room = admin_room
        self._language = language
        self._tasks: set[asyncio.Task[None]] = set()
        self._down_since: float | None = None

    def __call__(self, health: StoreHealth) -> None:
        room = self._admin_room()
        with i18n.language(self._language()):  # no one person asked: the config's language
            if health.ok:
                down_s = 0.0 if self._down_since is None else health.since - self._down_since
                self._down_since = None
                text = replies.store_recovered(down_s)
            else:
                self._down_since = health.since
                text = replies.store_down(health.since, health.reason)
        if room:
            task = asyncio.create_task(self._post(room, text), name="store-notice")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, room: str, text: str) -> None:
        try:
            await self._poster.send_message(room, text)
        except TalkError as exc:
            log.warning("store.notice_failed", error=type(exc).__name__)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


RUNTIME = web.AppKey("runtime", Runtime)


def routing_policy(settings: Settings) -> RoutingPolicy:
    return RoutingPolicy(
        access=settings.access,
        chat=settings.chat,
        confirm=settings.confirm,
        bot_actor_id=bot_actor_id(settings.server.webhook_url()),
    )


def new_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    ring: LogRing | None = None,
    redactor: Redactor | None = None,
    extra_tools: Sequence[Tool[Any]] = (),
    fetch_policy: AddressPolicy | None = None,
) -> Runtime:
    """``extra_tools`` join the configured tools (tests inject their own here);
    ``fetch_policy`` replaces http_fetch's public-internet policy (tests only)."""
    return Runtime(
        settings=settings,
        clock=clock or SystemClock(),
        ring=ring or LogRing(),
        redactor=redactor or Redactor(),
        extra_tools=tuple(extra_tools),
        fetch_policy=fetch_policy,
    )
