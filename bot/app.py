"""The composition root: the only place that builds objects from settings and wires them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from bot import __version__, replies
from bot.access import Access
from bot.agent.history import History
from bot.agent.llm import LLM
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.dispatch import Dispatcher
from bot.errors import ConfigError
from bot.handlers import EventHandler
from bot.handlers.admin import AdminCommands, AdminDeps, uptime_text
from bot.handlers.chat import ChatDeps, ChatHandler, Poster
from bot.logs import LogRing, Redactor
from bot.metrics import CONTENT_TYPE, Metrics
from bot.routing import RouteKind, RoutingPolicy
from bot.store import InboxItem, Store
from bot.talk.client import TalkClient
from bot.talk.events import bot_actor_id, parse_event
from bot.tools import Tool, Toolbox
from bot.tools.clock import make_clock_tools
from bot.webhook import WebhookReceiver

log = structlog.get_logger(__name__)

STOP_DEADLINE_S = 60.0  # below systemd's TimeoutStopSec (90 s by default)
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
    handler: EventHandler
    dispatcher: Dispatcher
    webhook: WebhookReceiver
    admin: AdminCommands | None = None


RUNTIME = web.AppKey("runtime", Runtime)
# Sections a running process cannot change in place.
RESTART_SECTIONS = ("server", "nextcloud", "storage")


def routing_policy(settings: Settings) -> RoutingPolicy:
    return RoutingPolicy(
        access=settings.access,
        chat=settings.chat,
        confirm=settings.confirm,
        bot_actor_id=bot_actor_id(settings.server.webhook_url()),
    )


def build_tools(settings: Settings) -> list[Tool[Any]]:
    return [*make_clock_tools()]


async def build_parts(
    runtime: Runtime, *, poster_factory: Callable[[TalkClient], Poster] | None = None
) -> Parts:
    settings, clock = runtime.settings, runtime.clock
    store = Store.open(settings.storage.path, clock)
    session = aiohttp.ClientSession(trust_env=False)
    secret = settings.nextcloud.bot_secret.get_secret_value()
    talk = TalkClient(session, settings.nextcloud.url, secret, clock=clock)
    poster: Poster = poster_factory(talk) if poster_factory else talk
    llm = LLM(settings.llm)
    access = Access(settings.access, dict((await store.role_overrides()).items()))  # type: ignore[arg-type]
    toolbox = Toolbox(build_tools(settings), settings.tools)
    history = History(store, settings.chat)
    chat = ChatHandler(
        ChatDeps(
            llm=llm,
            toolbox=toolbox,
            history=history,
            poster=poster,
            clock=clock,
            metrics=runtime.metrics,
            chat=settings.chat,
            llm_settings=settings.llm,
        )
    )
    handler = EventHandler(
        store=store,
        access=access,
        policy=routing_policy(settings),
        history=history,
        chat=chat,
        poster=poster,
        greeting=settings.chat.greeting,
    )

    async def apologise(item: InboxItem) -> None:
        await chat.say(parse_event(item.body), replies.apology())

    async def busy(item: InboxItem) -> None:
        await chat.say(parse_event(item.body), replies.busy())

    dispatcher = Dispatcher(
        store,
        handler.handle,
        clock=clock,
        concurrency=max(settings.llm.concurrency * 4, 8),
        on_failure=apologise,
        on_overflow=busy,
    )
    webhook = WebhookReceiver(
        settings=settings.server,
        secret=lambda: secret,
        store=store,
        dispatcher=dispatcher,
        metrics=runtime.metrics,
        clock=clock,
    )
    parts = Parts(
        store=store,
        session=session,
        talk=talk,
        poster=poster,
        llm=llm,
        access=access,
        toolbox=toolbox,
        history=history,
        chat=chat,
        handler=handler,
        dispatcher=dispatcher,
        webhook=webhook,
    )
    wire_admin(runtime, parts)
    return parts


def wire_admin(runtime: Runtime, parts: Parts) -> AdminCommands:
    """The admin room's commands, with what they may see and change."""
    admin = AdminCommands(
        AdminDeps(
            store=parts.store,
            access=parts.access,
            ring=runtime.ring,
            say=parts.chat.say,
            status=lambda: status_facts(runtime),
            reload=lambda: reload_settings(runtime),
            prefix=lambda: runtime.settings.access.command_prefix,
        )
    )
    parts.handler.register(RouteKind.ADMIN_COMMAND, admin.handle)
    parts.admin = admin
    return admin


async def status_facts(runtime: Runtime) -> dict[str, Any]:
    """What !status shows; never a secret."""
    parts, settings = runtime.running, runtime.settings
    rooms = await parts.store.list_rooms()
    return {
        "uptime": uptime_text(runtime.started_at, runtime.clock.now()),
        "model": f"{settings.llm.model} at {settings.llm.base_url}",
        "rooms": sum(1 for room in rooms if room.joined),
        "turns": int(sum(_samples(runtime.metrics.turns))),
        "inbox backlog": await parts.store.inbox_backlog(),
        "last webhook": parts.webhook.last_webhook_at,
        "send failures": parts.talk.failures,
        "last send error": parts.talk.last_error,
    }


def _samples(counter: Any) -> list[float]:
    return [
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    ]


async def reload_settings(runtime: Runtime) -> str:
    """Re-read the config; a bad one is refused and the running one kept."""
    if runtime.load_settings is None:
        return "Reload is not available: this process was not started from a config file."
    try:
        new = runtime.load_settings()
    except ConfigError as exc:
        log.warning("config.reload_refused", reason=exc.one_line())
        return f"Config not reloaded, the running one stays. {exc.one_line()}"
    old, parts = runtime.settings, runtime.running
    parts.access.reconfigure(new.access)
    parts.history.reconfigure(new.chat)
    parts.handler.policy = routing_policy(new)
    parts.handler.greeting = new.chat.greeting
    if new.tools != old.tools:
        parts.toolbox = Toolbox(build_tools(new), new.tools)
    if new.llm != old.llm:
        old_llm, parts.llm = parts.llm, LLM(new.llm)
        await old_llm.aclose()
    parts.chat.reconfigure(new.chat, new.llm, llm=parts.llm, toolbox=parts.toolbox)
    runtime.settings = new
    for hook in runtime.reload_hooks:
        await hook(new)
    log.info("config.reloaded")
    later = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
    note = f" Changes to {', '.join(later)} take effect after `!restart`." if later else ""
    return f"Config reloaded.{note}"


async def close_parts(parts: Parts) -> None:
    await parts.dispatcher.stop(STOP_DEADLINE_S)
    await parts.llm.aclose()
    await parts.session.close()
    await parts.store.close()


def build_app(
    runtime: Runtime, *, poster_factory: Callable[[TalkClient], Poster] | None = None
) -> web.Application:
    """The aiohttp application; its cleanup context owns every part's lifetime."""
    settings = runtime.settings
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[RUNTIME] = runtime

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        runtime.parts = await build_parts(runtime, poster_factory=poster_factory)
        runtime.started_at = runtime.clock.now()
        runtime.redactor.add_secrets(_secrets(settings))
        await runtime.parts.dispatcher.start()
        log.info("talkbot.started", version=__version__, webhook=settings.server.webhook_path)
        yield
        log.info("talkbot.stopping")
        await close_parts(runtime.parts)
        runtime.parts = None

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(settings.server.webhook_path, _webhook)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


def _secrets(settings: Settings) -> list[str]:
    return [
        settings.nextcloud.bot_secret.get_secret_value(),
        settings.llm.api_key.get_secret_value(),
    ]


async def _webhook(request: web.Request) -> web.Response:
    return await request.app[RUNTIME].running.webhook.handle(request)


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    parts = runtime.parts
    if parts is None:
        return web.json_response({"ready": False}, status=503)
    backlog = await parts.store.inbox_backlog()
    body = {
        "ready": True,
        "version": __version__,
        "store": "open",
        "inbox_backlog": backlog,
        "last_webhook_at": parts.webhook.last_webhook_at,
        "send_failures": parts.talk.failures,
        "last_send_error": parts.talk.last_error,
        "last_send_error_at": parts.talk.last_error_at,
    }
    return web.json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.parts is not None:
        runtime.metrics.inbox_backlog.set(await runtime.parts.store.inbox_backlog())
    return web.Response(body=runtime.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def new_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    ring: LogRing | None = None,
    redactor: Redactor | None = None,
) -> Runtime:
    return Runtime(
        settings=settings,
        clock=clock or SystemClock(),
        ring=ring or LogRing(),
        redactor=redactor or Redactor(),
    )
