"""The composition root: the only place that builds objects from settings and wires them."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import structlog

from bot import __version__, replies
from bot.access import Access, stored_roles
from bot.agent.history import History
from bot.clock import Clock
from bot.config import Role, Settings, StorageSettings
from bot.directory import Directory
from bot.dispatch import Dispatcher
from bot.errors import ConfigError, TalkError
from bot.handlers import EventHandler
from bot.handlers.admin import AdminCommands, AdminDeps, CommandSpec
from bot.handlers.chat import ChatDeps, ChatHandler
from bot.handlers.confirm import ConfirmHandler
from bot.handlers.job_commands import JobCommands, RoomJobs
from bot.handlers.pending_commands import PendingCommands
from bot.handlers.tools_command import ToolsCommand
from bot.handlers.usage_commands import UsageCommands
from bot.i18n import N_
from bot.nextcloud import Provisioning
from bot.observe import MeteredConfirmations, MeteredLLM, MeteredPoster, MeteredToolbox, count_runs
from bot.quotas import Quotas
from bot.reloading import reload_everywhere
from bot.replicas import Coordinator, new_replica
from bot.routing import Route, RouteKind
from bot.runtime import EXIT_RESTART, Parts, Runtime, StoreNotices, routing_policy
from bot.scheduler import JobDelivery, Scheduler, check_schedules, config_rooms
from bot.status import status_facts
from bot.store import InboxItem, Store
from bot.talk.client import TalkClient
from bot.talk.events import Event, parse_event
from bot.talk.poster import Poster
from bot.tools.talk import RoomDirectory
from bot.tools.web import HttpFetcher
from bot.toolset import ToolDeps, build_tools
from bot.webhook import WebhookReceiver

log = structlog.get_logger(__name__)


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
