"""The composition root: the only place that builds objects from settings and wires them."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from bot import __version__, i18n, replies
from bot.access import Access, stored_roles
from bot.agent.history import History
from bot.agent.llm import LLM
from bot.clock import Clock, SystemClock
from bot.config import (
    NextcloudSettings,
    Role,
    Settings,
    StorageSettings,
    config_warnings,
    strip_credentials,
)
from bot.directory import Directory
from bot.dispatch import Dispatcher
from bot.errors import ConfigError, NextcloudError, StoreError, TalkError
from bot.handlers import EventHandler
from bot.handlers.admin import (
    AdminCommands,
    AdminDeps,
    CommandSpec,
    JobCommands,
    PendingCommands,
    RoomJobs,
    ToolsCommand,
    UsageCommands,
    uptime_text,
)
from bot.handlers.chat import ChatDeps, ChatHandler, Poster
from bot.handlers.confirm import ConfirmHandler
from bot.i18n import N_, _
from bot.logs import LogRing, Redactor
from bot.metrics import CONTENT_TYPE, Metrics
from bot.nextcloud import Provisioning
from bot.observe import (
    MeteredConfirmations,
    MeteredLLM,
    MeteredPoster,
    MeteredToolbox,
    count_runs,
)
from bot.quotas import Quotas
from bot.replicas import Coordinator, Duties, new_replica
from bot.routing import Route, RouteKind, RoutingPolicy
from bot.scheduler import (
    JobDelivery,
    Scheduler,
    check_schedules,
    config_rooms,
)
from bot.store import InboxItem, Store, StoreHealth
from bot.talk.client import TalkClient
from bot.talk.events import Event, bot_actor_id, parse_event
from bot.tools import Tool, Toolbox
from bot.tools.clock import make_clock_tools
from bot.tools.files import FILE_TOOLS, FileArea, make_file_tools, root_problem, root_refusal
from bot.tools.netguard import AddressPolicy
from bot.tools.ops import make_ops_tools
from bot.tools.plugins import ToolDeps as PluginDeps
from bot.tools.plugins import load_plugin_tools
from bot.tools.schedule import make_schedule_tools
from bot.tools.talk import RoomDirectory, make_talk_tools
from bot.tools.web import HttpFetcher, make_fetch_tools, make_search_tools
from bot.webhook import WebhookReceiver

if TYPE_CHECKING:
    from bot.tools.mcp import McpTools

log = structlog.get_logger(__name__)

STOP_DEADLINE_S = 60.0
HOUSEKEEPING_INTERVAL_S = 6 * 3600  # below systemd's TimeoutStopSec (90 s by default)
EXIT_RESTART = 75  # EX_TEMPFAIL: systemd's Restart=on-failure starts us again
# /readyz waits this long for the store to answer a query before calling it unresponsive.
READYZ_STORE_TIMEOUT_S = 1.0


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
    handler: EventHandler
    dispatcher: Dispatcher
    webhook: WebhookReceiver
    scheduler: Scheduler
    tool_deps: ToolDeps
    coordinator: Coordinator
    directory: Directory
    # The configured tools (built-in, [tools] modules, a test's own); the toolbox is these
    # and the MCP servers' tools of the moment.
    own_tools: tuple[Tool[Any], ...] = ()
    mcp: McpTools | None = None
    admin: AdminCommands | None = None
    housekeeping: asyncio.Task[None] | None = None
    confirm: ConfirmHandler | None = None
    store_notices: StoreNotices | None = None


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
# Sections a running process cannot change in place.
RESTART_SECTIONS = ("server", "nextcloud", "storage")


def routing_policy(settings: Settings) -> RoutingPolicy:
    return RoutingPolicy(
        access=settings.access,
        chat=settings.chat,
        confirm=settings.confirm,
        bot_actor_id=bot_actor_id(settings.server.webhook_url()),
    )


@dataclass(frozen=True)
class ToolDeps:
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


def build_tools(settings: Settings, deps: ToolDeps | None = None) -> list[Tool[Any]]:
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


async def validate_deployment(settings: Settings) -> list[tuple[str, str]]:
    """What ``serve`` checks before it binds, beyond the config models; ``check`` runs it too.

    ConfigError names every problem together (schedule expressions, [tools] modules); the
    returned (field, reason) pairs are warnings: it starts, but probably not as meant.
    """
    problems: list[tuple[str, str]] = []
    try:
        check_schedules(settings.schedules, settings.chat.timezone)
    except ConfigError as exc:
        problems += exc.problems
    try:
        await _dry_run_tools(settings)
    except ConfigError as exc:
        problems += exc.problems
    problems += _files_root_refusal(settings)
    problems += _mcp_client_missing(settings)
    if problems:
        raise ConfigError(problems)
    return config_warnings(settings) + _files_warnings(settings)


def _mcp_client_missing(settings: Settings) -> list[tuple[str, str]]:
    if not settings.mcp.servers or importlib.util.find_spec("mcp") is not None:
        return []
    return [("mcp.servers", "the MCP client is not installed: pip install 'talkbot[mcp]'")]


def log_warnings(warnings: Sequence[tuple[str, str]]) -> None:
    for name, reason in warnings:
        log.warning("config.warning", field=name, reason=reason)


async def _dry_run_tools(settings: Settings) -> None:
    """build_tools as the daemon calls it, on stand-ins that reach nobody: [tools] modules
    are imported and their make_tools run, so a broken one is found before anything starts."""
    clock = SystemClock()
    store = Store.open(Path(":memory:"), clock)
    session = aiohttp.ClientSession(trust_env=False)
    fetcher = HttpFetcher(settings.tools.http_fetch)
    talk = TalkClient(session, settings.nextcloud.url, "", clock=clock)  # never called
    delivery = JobDelivery(store=store, poster=talk, role_of=lambda _actor: "none")
    deps = ToolDeps(
        scheduler=Scheduler(store, clock, delivery, default_timezone=settings.chat.timezone),
        rooms=RoomDirectory(store),
        poster=talk,
        session=session,
        fetcher=fetcher,
        ring=LogRing(),
        clock=clock,
        restart=lambda: None,
        admin_room=lambda: settings.access.admin_room,
    )
    try:
        build_tools(settings, deps)
    finally:
        await fetcher.aclose()
        await session.close()
        await store.close()


def build_directory(settings: Settings, session: aiohttp.ClientSession, clock: Clock) -> Directory:
    """People's groups and languages from Nextcloud, when ``[nextcloud] user`` is set."""
    nextcloud = settings.nextcloud
    source = (
        Provisioning(
            session, nextcloud.url, nextcloud.user, nextcloud.app_password.get_secret_value()
        )
        if nextcloud.user
        else None
    )
    return Directory(source, clock, ttl_s=nextcloud.groups_ttl_s, stale_s=nextcloud.groups_stale_s)


def open_store(storage: StorageSettings, clock: Clock, *, replica: str = "") -> Store:
    """The store the config names: PostgreSQL when ``url`` is set, else SQLite at ``path``."""
    if storage.backend == "postgres":
        password = storage.password.get_secret_value() or None
        return Store.open_postgres(storage.url, password, clock, replica=replica)
    return Store.open(storage.path, clock, replica=replica)


async def describe_account(nextcloud: NextcloudSettings, mapped: tuple[str, ...] = ()) -> str:
    """For ``talkbot check``: does Nextcloud take the service account, and which groups
    can it see (those it is group admin of)? One request; a 401 is not tried again.
    ``mapped`` are the groups of ``[access.groups]``: any it cannot see grants nothing."""
    async with aiohttp.ClientSession(trust_env=False) as session:
        api = Provisioning(
            session, nextcloud.url, nextcloud.user, nextcloud.app_password.get_secret_value()
        )
        try:
            account = await api.account()
        except NextcloudError as exc:
            return f"{nextcloud.user}: {exc}"
    if not account.subadmin_of:
        text = f"{account.id}: accepted, but group admin of no group, so it sees none"
    else:
        text = (
            f"{account.id}: accepted; sees the groups it manages: {', '.join(account.subadmin_of)}"
        )
    unseen = [group for group in mapped if group not in account.subadmin_of]
    if unseen:
        text += (
            f"; mapped in [access.groups] but not visible, so they grant nothing:"
            f" {', '.join(unseen)} (make {account.id} their group admin)"
        )
    return text


async def describe_mcp_servers(settings: Settings) -> list[tuple[str, str]]:
    """For ``talkbot check``: connect to each MCP server once, say what it would offer."""
    if not settings.mcp.servers:
        return []
    from bot.tools.mcp import probe  # noqa: PLC0415 - optional, and 0.4 s to import

    states = await asyncio.gather(*(probe(server) for server in settings.mcp.servers))
    return [
        (server.name, state) for server, state in zip(settings.mcp.servers, states, strict=True)
    ]


def describe_store(storage: StorageSettings) -> str:
    """For ``talkbot check``: where the store is and whether it can be used; no change."""
    if storage.backend == "sqlite":
        state = "exists" if storage.path.exists() else "created at the first start"
        return f"SQLite at {storage.path} ({state})"
    try:
        from bot.store.postgres import describe  # noqa: PLC0415 - optional dependency
    except ImportError:
        return "PostgreSQL: psycopg is missing: pip install 'talkbot[postgres]'"
    return describe(storage.url, storage.password.get_secret_value() or None)


def _files_root_refusal(settings: Settings) -> list[tuple[str, str]]:
    """A files root within reach of the config, a secret file or the store is refused."""
    if not any(settings.tools.policy(name).enabled is not False for name in FILE_TOOLS):
        return []
    store = [settings.storage.path] if settings.storage.backend == "sqlite" else []
    protected = [*settings.source_files, *store]
    refusal = root_refusal(Path(settings.tools.files.root), protected)
    return [("tools.files.root", refusal)] if refusal else []


def _files_warnings(settings: Settings) -> list[tuple[str, str]]:
    offered = any(settings.tools.policy(name).enabled is not False for name in FILE_TOOLS)
    problem = root_problem(settings.tools.files) if offered else None
    return [("tools.files.root", problem)] if problem else []


async def build_parts(
    runtime: Runtime, *, poster_factory: Callable[[TalkClient], Poster] | None = None
) -> Parts:
    settings, clock = runtime.settings, runtime.clock
    check_schedules(settings.schedules, settings.chat.timezone)
    me = new_replica(clock, __version__)
    store = open_store(settings.storage, clock, replica=me.id)
    shared = settings.storage.backend == "postgres"
    # With replicas, heartbeats and leases go over a connection of their own: queued
    # behind a burst of webhooks on the main one, a late heartbeat would let a lease
    # lapse while this replica still serves the room.
    leases = open_store(settings.storage, clock, replica=me.id) if shared else store
    coordinator = Coordinator(leases, clock, me, shared=shared, lease_s=settings.storage.lease_s)
    session = aiohttp.ClientSession(trust_env=False)
    secret = settings.nextcloud.bot_secret.get_secret_value()
    talk = TalkClient(session, settings.nextcloud.url, secret, clock=clock)
    inner: Poster = poster_factory(talk) if poster_factory else talk
    poster: Poster = MeteredPoster(inner, runtime.metrics)
    llm = MeteredLLM(settings.llm, runtime.metrics)
    directory = build_directory(settings, session, clock)
    access = Access(
        settings.access, stored_roles(await store.role_overrides()), groups_of=directory.groups
    )
    # Daily token quotas: [limits] per role and per Nextcloud group (the directory's).
    quotas = Quotas(
        store,
        clock,
        limits=lambda: runtime.settings.limits,
        timezone=lambda: runtime.settings.chat.timezone,
        groups_of=directory.groups,
    )
    delivery = JobDelivery(
        store=store,
        poster=poster,
        role_of=access.role_of,
        quotas=quotas,
        learn=directory.ensure_actor,
        language_of=lambda actor: (
            directory.language_of_actor(actor) or runtime.settings.chat.language
        ),
    )
    scheduler = Scheduler(
        store,
        clock,
        count_runs(delivery, runtime.metrics),
        default_timezone=settings.chat.timezone,
        limits=lambda: runtime.settings.limits,
    )
    rooms = RoomDirectory(
        store, lambda: config_rooms(runtime.settings.access.admin_room, runtime.settings.schedules)
    )
    tool_deps = ToolDeps(
        scheduler=scheduler,
        rooms=rooms,
        poster=poster,
        session=session,
        fetcher=HttpFetcher(settings.tools.http_fetch, policy=runtime.fetch_policy),
        ring=runtime.ring,
        clock=clock,
        restart=lambda: runtime.request_stop(EXIT_RESTART),
        admin_room=lambda: runtime.settings.access.admin_room,
    )
    try:
        own_tools = (*build_tools(settings, tool_deps), *runtime.extra_tools)
        toolbox = MeteredToolbox(own_tools, settings.tools, metrics=runtime.metrics)
    except ConfigError:  # a broken [tools] module: one line at start, nothing left open
        await llm.aclose()
        await session.close()
        await coordinator.close()
        await store.close()
        raise
    history = History(store, settings.chat)
    chat_deps = ChatDeps(
        llm=llm,
        toolbox=toolbox,
        history=history,
        poster=poster,
        clock=clock,
        metrics=runtime.metrics,
        chat=settings.chat,
        llm_settings=settings.llm,
        limits=settings.limits,
        quotas=quotas,
    )
    chat = ChatHandler(chat_deps)
    delivery.use_turns(chat.run_unattended)
    handler = EventHandler(
        store=store,
        access=access,
        policy=routing_policy(settings),
        history=history,
        chat=chat,
        poster=poster,
        greeting=settings.chat.greeting,
        directory=directory,
        language=lambda: runtime.settings.chat.language,
    )

    async def apologise(item: InboxItem) -> None:
        await chat.say(parse_event(item.body), replies.apology())

    async def busy(item: InboxItem) -> None:
        await chat.say(parse_event(item.body), replies.busy())

    dispatcher = Dispatcher(
        store,
        handler.handle,
        clock=clock,
        triage=handler.triage,
        act=handler.act,
        concurrency=max(settings.llm.concurrency * 4, 8),
        on_failure=apologise,
        on_overflow=busy,
        coordinator=coordinator,
    )
    webhook = WebhookReceiver(
        settings=settings.server,
        secret=lambda: secret,
        store=store,
        dispatcher=dispatcher,
        metrics=runtime.metrics,
        clock=clock,
        room_enabled=talk.room_enabled,
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
        scheduler=scheduler,
        tool_deps=tool_deps,
        coordinator=coordinator,
        directory=directory,
        own_tools=own_tools,
    )
    parts.store_notices = StoreNotices(
        poster,
        lambda: runtime.settings.access.admin_room,
        lambda: runtime.settings.chat.language,
    )
    store.watch_health(parts.store_notices)
    admin = wire_admin(runtime, parts)
    wire_schedules(runtime, parts)
    wire_usage(runtime, parts, quotas)
    confirm = wire_confirmations(runtime, parts, chat_deps)
    wire_admin_extras(runtime, admin, confirm, parts.scheduler)
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
            reload=lambda: reload_everywhere(runtime, parts),
            prefix=lambda: runtime.settings.access.command_prefix,
            directory=parts.directory,
        )
    )
    tools = ToolsCommand(
        lambda: parts.toolbox, lambda: parts.mcp.states() if parts.mcp is not None else ()
    )
    admin.add("tools", tools.spec())
    parts.handler.register(RouteKind.ADMIN_COMMAND, admin.handle)
    parts.admin = admin
    return admin


def wire_admin_extras(
    runtime: Runtime, admin: AdminCommands, confirm: ConfirmHandler, scheduler: Scheduler
) -> None:
    """Admin commands built on the confirmations and the scheduler."""

    def settings() -> Settings:  # read at call time: !reload swaps the settings
        return runtime.settings

    extras = {
        **PendingCommands(
            confirm,
            prefix=lambda: settings().access.command_prefix,
            timezone=lambda: settings().chat.timezone,
        ).specs(),
        **JobCommands(
            scheduler,
            prefix=lambda: settings().access.command_prefix,
            admin_room=lambda: settings().access.admin_room,
            timezone=lambda: settings().chat.timezone,
        ).specs(),
    }
    for name, spec in extras.items():
        admin.add(name, spec)


def wire_confirmations(runtime: Runtime, parts: Parts, chat_deps: ChatDeps) -> ConfirmHandler:
    """Pending actions: the prompt when a turn pauses, the answers, and their lookup."""
    confirmations = MeteredConfirmations(
        parts.store, runtime.clock, runtime.settings.confirm, metrics=runtime.metrics
    )
    confirm = ConfirmHandler(
        confirmations=confirmations,
        chat=parts.chat,
        toolbox=lambda: parts.toolbox,
        access=parts.access,
        history=parts.history,
        command_prefix=lambda: runtime.settings.access.command_prefix,
    )
    chat_deps.on_confirmation = confirm.on_confirmation
    handler = parts.handler
    handler.set_pending_lookup(confirm.lookup)
    handler.register(RouteKind.CONFIRM, confirm.on_answer)
    handler.register(RouteKind.DENY, confirm.on_answer)
    handler.register(RouteKind.NOT_REQUESTER, confirm.on_not_requester)
    handler.register(RouteKind.REACTION, confirm.on_reaction)
    handler.register(RouteKind.CHAT, confirm.on_chat)  # a requester's new message cancels

    async def reconfigure(new: Settings) -> None:
        confirmations.reconfigure(new.confirm)

    runtime.reload_hooks.append(reconfigure)
    parts.confirm = confirm
    return confirm


def wire_usage(runtime: Runtime, parts: Parts, quotas: Quotas) -> None:
    """``!usage``: one's own tokens in any room; anyone's, or the day's, for admins."""
    usage = UsageCommands(
        quotas,
        role_of=parts.access.role_of,
        prefix=lambda: runtime.settings.access.command_prefix,
    )

    async def own_usage(event: Event, role: Role, route: Route) -> None:
        await parts.chat.say(event, await usage.in_room(event, role, route.args))

    parts.handler.register_room_command("usage", own_usage)
    if parts.admin is not None:
        for name, spec in usage.specs().items():
            parts.admin.add(name, spec)


def wire_schedules(runtime: Runtime, parts: Parts) -> None:
    """``!jobs [remove ID]``: own jobs in any room, the room's jobs for its moderators,
    every job for admins in the admin room."""
    jobs = RoomJobs(
        parts.scheduler, parts.store, prefix=lambda: runtime.settings.access.command_prefix
    )

    async def room_jobs(event: Event, role: Role, route: Route) -> None:
        await parts.chat.say(event, await jobs.in_room(event, role, route.args))

    async def member_left(event: Event, _role: Role, route: Route) -> None:
        paused = await parts.scheduler.pause_for_departure(route.args, event.room.token)
        if not paused:
            return
        prefix = runtime.settings.access.command_prefix
        note = replies.jobs_paused_for_departure(route.args, paused, prefix)
        try:  # not as a reply: Talk refuses replies to system messages
            await parts.poster.send_message(event.room.token, note)
        except TalkError as exc:
            log.warning("schedule.departure_note_failed", error=type(exc).__name__)

    async def reconcile(new: Settings) -> None:
        try:
            await runtime.running.scheduler.reload(new.schedules)
        except ConfigError as exc:
            log.warning("schedule.reload_refused", reason=exc.one_line())

    parts.handler.register_room_command("jobs", room_jobs)
    parts.handler.register(RouteKind.MEMBER_LEFT, member_left)
    if parts.admin is not None:
        parts.admin.add(
            "jobs",
            CommandSpec(
                "jobs [remove ID]", N_("every scheduled job, or remove one"), jobs.in_admin_room
            ),
        )
    runtime.reload_hooks.append(reconcile)


async def status_facts(runtime: Runtime) -> dict[str, Any]:
    """What !status shows; never a secret. The keys are msgids: !status translates them."""
    parts, settings = runtime.running, runtime.settings
    rooms = await parts.store.list_rooms()
    pending = await parts.store.list_open_pending()
    return {
        N_("uptime"): uptime_text(runtime.started_at, runtime.clock.now()),
        N_("store"): _store_fact(parts.store.health),
        N_("replicas"): await _replicas_fact(parts.coordinator, runtime.clock.now()),
        N_("model"): _("{model} at {url}").format(
            model=settings.llm.model, url=strip_credentials(settings.llm.base_url)
        ),
        N_("rooms"): sum(1 for room in rooms if room.joined),
        N_("turns since start"): int(sum(_samples(runtime.metrics.turns))),
        # Waiting only: the command asking is itself in the inbox, running.
        N_("inbox backlog"): await parts.store.inbox_backlog(waiting_only=True),
        N_("pending confirmations"): len(pending),
        N_("mcp servers"): _mcp_fact(parts),
        N_("nextcloud account"): _directory_fact(parts.directory, settings),
        N_("next scheduled runs"): await _next_runs(parts.scheduler),
        N_("last webhook"): parts.webhook.last_webhook_at,
        N_("send failures"): parts.talk.failures,
        N_("last send error"): parts.talk.last_error,
    }


async def _replicas_fact(coordinator: Coordinator, now: float) -> str:
    if not coordinator.shared:
        return _("this process only (SQLite)")
    seen = []
    for replica in await coordinator.replicas():
        ago = (
            _("this one")
            if replica.id == coordinator.me.id
            else _("seen {seconds} s ago").format(seconds=f"{now - replica.seen_at:.0f}")
        )
        seen.append(f"{replica.id} ({ago})")
    return f"{len(seen)}: {', '.join(seen)}"


def _directory_fact(directory: Directory, settings: Settings) -> str:
    health = directory.health()
    if health.state == "unused":
        return "none (roles from the config only)"
    if health.state == "ok":
        return f"{settings.nextcloud.user}: groups of {health.people} people known"
    assert health.since is not None  # noqa: S101 - set with every failure
    when = datetime.fromtimestamp(health.since, UTC)
    return (
        f"{settings.nextcloud.user}: {health.state} since {when:%Y-%m-%d %H:%M:%S} UTC"
        f" ({health.reason}); known groups kept {settings.nextcloud.groups_stale_s} s,"
        " then config roles"
    )


def _mcp_fact(parts: Parts) -> str:
    states = parts.mcp.states() if parts.mcp is not None else []
    if not states:
        return _("none")
    ready = sum(1 for state in states if state.state == "ready")
    down = [state.name for state in states if state.state != "ready"]
    text = _("{ready} of {count} connected").format(ready=ready, count=len(states))
    if down:
        text += _("; not connected: {names} (see `!tools`)").format(names=", ".join(down))
    return text


def _store_fact(health: StoreHealth) -> str:
    if health.ok:
        return _("saving")
    when = datetime.fromtimestamp(health.since, UTC)
    return _("cannot save since {when} UTC: {reason}").format(
        when=f"{when:%Y-%m-%d %H:%M:%S}", reason=health.reason
    )


async def _next_runs(scheduler: Scheduler, count: int = 3) -> str:
    upcoming = sorted(
        (fire, job.id)
        for job in await scheduler.jobs()
        if (fire := scheduler.next_fire_time(job)) is not None
    )[:count]
    when = [
        f"{job_id} {datetime.fromtimestamp(fire, UTC):%Y-%m-%d %H:%M} UTC"
        for fire, job_id in upcoming
    ]
    return ", ".join(when) or _("none")


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
    parts.handler.policy = routing_policy(new)
    parts.handler.greeting = new.chat.greeting
    parts.own_tools = own_tools
    if new.llm != old.llm:
        old_llm, parts.llm = parts.llm, MeteredLLM(new.llm, runtime.metrics)
        await old_llm.aclose()
    runtime.settings = new
    parts.toolbox = assemble_toolbox(runtime, parts)
    parts.chat.reconfigure(
        new.chat, new.llm, llm=parts.llm, toolbox=parts.toolbox, limits=new.limits
    )
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
        parts.toolbox = assemble_toolbox(runtime, parts)
        parts.chat.use_toolbox(parts.toolbox)

    parts.mcp = McpTools(runtime.clock, tools_changed)
    parts.mcp.start(settings.mcp.servers)


async def housekeep(store: Store, interval_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
    """Old inbox bodies go, every few hours; a failure is logged and tried again later."""
    while True:
        try:
            await store.purge()
        except Exception:
            log.exception("store.housekeeping_failed")
        await asyncio.sleep(interval_s)


async def drain(runtime: Runtime) -> None:
    """Finish or park the work in progress while the port still takes webhooks: what
    arrives meanwhile is stored and answered 200 at once, and left pending for the next
    process (a long turn at a restart must not make Talk's 5 s run out). Closing the
    parts afterwards finds nothing left to wait for."""
    parts = runtime.parts
    if parts is None:
        return
    await parts.tool_deps.fetcher.stop_converting()
    await parts.scheduler.stop()
    await parts.dispatcher.stop(STOP_DEADLINE_S)
    await parts.coordinator.stop()  # its rooms go to the other replicas at once


async def close_parts(parts: Parts) -> None:
    if parts.housekeeping is not None:
        parts.housekeeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await parts.housekeeping
    await parts.tool_deps.fetcher.stop_converting()  # a hostile page never holds the stop (H01)
    await parts.scheduler.stop()
    await parts.dispatcher.stop(STOP_DEADLINE_S)
    await parts.coordinator.stop()
    await parts.coordinator.close()
    if parts.store_notices is not None:  # after the drain: a notice it causes is still owned
        await parts.store_notices.aclose()
    if parts.mcp is not None:
        await parts.mcp.aclose()
    await parts.llm.aclose()
    await parts.directory.aclose()
    await parts.session.close()
    await parts.tool_deps.fetcher.aclose()
    await parts.store.close()


async def start_parts(runtime: Runtime, parts: Parts, *, schedules: bool = True) -> None:
    """Put built parts to work: recover confirmations, resume the inbox, arm the schedules.

    The console passes ``schedules=False``: scheduled posts belong in Talk, not a terminal.
    """
    runtime.parts = parts
    runtime.started_at = runtime.clock.now()
    runtime.redactor.add_secrets(runtime.settings.secret_values())
    if parts.confirm is not None:  # before the inbox resumes: never re-run (A10)
        await parts.confirm.recover_interrupted(await parts.coordinator.alive())
    await parts.coordinator.start(replica_duties(runtime, parts))
    use_mcp_servers(runtime, parts, runtime.settings)  # connect in the background
    await parts.dispatcher.start()
    if schedules:
        alive = await parts.coordinator.alive()
        await parts.scheduler.start(runtime.settings.schedules, alive=alive)
    parts.housekeeping = asyncio.create_task(housekeep(parts.store), name="housekeeping")


def replica_duties(runtime: Runtime, parts: Parts) -> Duties:
    """What this replica does for the others (only with a shared store): take up rooms,
    reload what changed elsewhere, fail what a dead replica left approved or running."""

    async def reload(topic: str) -> None:
        if topic == "roles":
            parts.access.replace_overrides(stored_roles(await parts.store.role_overrides()))
        elif topic == "jobs":
            await parts.scheduler.rearm()
        elif topic == "config":
            log.info("config.reload_requested", outcome=await reload_settings(runtime))

    async def recover(alive: list[str]) -> None:
        if parts.confirm is not None:
            await parts.confirm.recover_interrupted(alive)
        await parts.scheduler.interrupt_runs(alive)

    return Duties(sweep=parts.dispatcher.sweep, reload=reload, recover=recover)


def build_app(
    runtime: Runtime, *, poster_factory: Callable[[TalkClient], Poster] | None = None
) -> web.Application:
    """The aiohttp application; its cleanup context owns every part's lifetime."""
    settings = runtime.settings
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[RUNTIME] = runtime

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await start_parts(runtime, await build_parts(runtime, poster_factory=poster_factory))
        log.info("talkbot.started", version=__version__, webhook=settings.server.webhook_path)
        yield
        log.info("talkbot.stopping")
        await close_parts(runtime.running)
        runtime.parts = None

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(settings.server.webhook_path, _webhook)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _webhook(request: web.Request) -> web.Response:
    return await request.app[RUNTIME].running.webhook.handle(request)


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    parts = runtime.parts
    if parts is None:
        return web.json_response({"ready": False, "store": "closed"}, status=503)
    store = await _store_readiness(parts.store)
    ready = parts.scheduler.running and store["store"] == "open"
    body = {
        "ready": ready,
        "version": __version__,
        "uptime_s": round(runtime.clock.now() - runtime.started_at, 3),
        **store,
        "scheduler": "running" if parts.scheduler.running else "stopped",
        "turns_in_progress": parts.dispatcher.backlog,
        "last_webhook_at": parts.webhook.last_webhook_at,
        "send_failures": parts.talk.failures,
        "last_send_error": parts.talk.last_error,
        "last_send_error_at": parts.talk.last_error_at,
        # A server that fails never makes the daemon unready: its tools are just not offered.
        "mcp_servers": {
            state.name: {"state": state.state, "reason": state.reason or None}
            for state in (parts.mcp.states() if parts.mcp is not None else [])
        },
    }
    return web.json_response(body, status=200 if ready else 503)


async def _store_readiness(store: Store) -> dict[str, Any]:
    """Whether the store commits (its health) and answers a query in time (H04)."""
    health = store.health
    try:  # a query: the store answers, not just "open"
        backlog: int | None = await asyncio.wait_for(store.inbox_backlog(), READYZ_STORE_TIMEOUT_S)
    except (TimeoutError, StoreError):
        backlog = None
    state = "open" if health.ok else "unavailable"
    if backlog is None:
        state = "unresponsive"
    return {
        "store": state,
        "store_error": None if health.ok else health.reason,
        "store_down_since": None if health.ok else health.since,
        "inbox_backlog": backlog,
    }


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
