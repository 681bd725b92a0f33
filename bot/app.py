"""The composition root: the only place that builds objects from settings and wires them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import aiohttp
import structlog

from bot import USER_AGENT, __version__, replies
from bot.access import Access, stored_roles
from bot.agent.history import History
from bot.clock import Clock
from bot.config import Settings, StorageSettings
from bot.directory import Directory
from bot.dispatch import Dispatcher
from bot.handlers import Router
from bot.handlers.chat import ChatDeps, ChatHandler
from bot.handlers.job_commands import RoomJobs
from bot.handlers.usage_commands import UsageCommands
from bot.metered import MeteredLLM, MeteredPoster, MeteredToolbox, count_runs
from bot.nextcloud import Provisioning
from bot.quotas import Quotas
from bot.replicas import Coordinator, new_replica
from bot.runtime import EXIT_RESTART, Parts, Runtime, StoreNotices, routing_policy
from bot.scheduler import JobDelivery, Scheduler, check_schedules, config_rooms
from bot.store import Store
from bot.talk.client import TalkClient
from bot.talk.poster import Poster
from bot.tools.talk import RoomDirectory
from bot.tools.web import HttpFetcher
from bot.toolset import BuiltinToolDeps, build_tools
from bot.webhook import WebhookReceiver
from bot.wiring import (
    build_admin,
    build_confirmations,
    build_routes,
    command_prefix,
    dispatcher_notice,
    reconcile_schedules,
)

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
    return Store.open(storage.path, clock, replica=replica, synchronous=storage.synchronous)


async def build_parts(
    runtime: Runtime, *, poster_factory: Callable[[TalkClient], Poster] | None = None
) -> Parts:
    """Every part, built and wired. Each resource registers its own teardown as it is
    opened (``Parts.resources``): when building fails half-way (a broken [tools] module,
    the store refusing a query), exactly what was opened is closed again."""
    async with contextlib.AsyncExitStack() as resources:
        parts = await _build_parts(runtime, resources, poster_factory)
        parts.resources = resources.pop_all()
        return parts


async def _build_parts(
    runtime: Runtime,
    resources: contextlib.AsyncExitStack,
    poster_factory: Callable[[TalkClient], Poster] | None,
) -> Parts:
    settings, clock = runtime.settings, runtime.clock
    check_schedules(settings.schedules, settings.chat.timezone)
    me = new_replica(clock, __version__)
    store = open_store(settings.storage, clock, replica=me.id)
    resources.push_async_callback(store.close)
    shared = settings.storage.backend == "postgres"
    # With replicas, heartbeats and leases go over a connection of their own: queued
    # behind a burst of webhooks on the main one, a late heartbeat would let a lease
    # lapse while this replica still serves the room.
    leases = open_store(settings.storage, clock, replica=me.id) if shared else store
    coordinator = Coordinator(leases, clock, me, shared=shared, lease_s=settings.storage.lease_s)
    resources.push_async_callback(coordinator.close)  # the leases' own connection
    session = aiohttp.ClientSession(trust_env=False, headers={"User-Agent": USER_AGENT})
    resources.push_async_callback(session.close)
    secret = settings.nextcloud.bot_secret.get_secret_value()
    talk = TalkClient(session, settings.nextcloud.url, secret, clock=clock)
    inner: Poster = poster_factory(talk) if poster_factory else talk
    poster: Poster = MeteredPoster(inner, runtime.metrics)
    llm = MeteredLLM(settings.llm, runtime.metrics)
    built: list[Parts] = []

    async def close_llm() -> None:  # !reload swaps the client: the one in use closes
        await (built[0].llm if built else llm).aclose()

    resources.push_async_callback(close_llm)
    directory = build_directory(settings, session, clock)
    resources.push_async_callback(directory.aclose)
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
    history = History(store, settings.chat)
    # The chat reads the toolbox of the moment from the running parts: the schedule tools
    # in it need the scheduler, whose prompt jobs are the chat's unattended turns.
    chat = ChatHandler(
        ChatDeps(
            llm=llm,
            toolbox=lambda: runtime.running.toolbox,
            history=history,
            poster=poster,
            clock=clock,
            metrics=runtime.metrics,
            chat=settings.chat,
            llm_settings=settings.llm,
            limits=settings.limits,
            quotas=quotas,
            still_holds=coordinator.holds,
        )
    )
    delivery = JobDelivery(
        store=store,
        poster=poster,
        role_of=access.role_of,
        run_turn=chat.run_unattended,
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
    tool_deps = open_tool_deps(
        runtime, resources, scheduler=scheduler, rooms=rooms, poster=poster, session=session
    )
    # A broken [tools] module raises ConfigError here: what was opened closes again.
    own_tools = (*build_tools(settings, tool_deps), *runtime.extra_tools)
    toolbox = MeteredToolbox(own_tools, settings.tools, metrics=runtime.metrics)
    approvals, confirm = build_confirmations(runtime, store, chat, access, history)
    prefix = command_prefix(runtime)
    usage = UsageCommands(quotas, role_of=access.role_of, prefix=prefix)
    jobs = RoomJobs(scheduler, store, prefix=prefix)
    admin = build_admin(
        runtime,
        store=store,
        access=access,
        directory=directory,
        chat=chat,
        approvals=approvals,
        scheduler=scheduler,
        jobs=jobs,
        usage=usage,
    )
    router = Router(
        store=store,
        access=access,
        policy=routing_policy(settings),
        history=history,
        chat=chat,
        routes=build_routes(
            runtime,
            store=store,
            history=history,
            poster=poster,
            chat=chat,
            confirm=confirm,
            admin=admin,
            scheduler=scheduler,
            jobs=jobs,
            usage=usage,
        ),
        pending=approvals.pending_in_room,
        greeting=settings.chat.greeting,
        directory=directory,
        language=lambda: runtime.settings.chat.language,
        none_waiting=approvals.none_waiting,
        shared=coordinator.shared,
    )

    dispatcher = Dispatcher(
        store,
        router.handle_item,
        clock=clock,
        triage=router.triage,
        act=router.act,
        concurrency=max(settings.llm.concurrency * 4, 8),
        on_failure=dispatcher_notice(router, chat, replies.apology),
        on_overflow=dispatcher_notice(router, chat, replies.busy),
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
        settler=router,
    )
    store_notices = open_store_notices(runtime, resources, store, poster)
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
        router=router,
        approvals=approvals,
        admin=admin,
        dispatcher=dispatcher,
        webhook=webhook,
        scheduler=scheduler,
        tool_deps=tool_deps,
        coordinator=coordinator,
        directory=directory,
        own_tools=own_tools,
        store_notices=store_notices,
    )
    built.append(parts)
    runtime.reload_hooks.append(reconcile_schedules(runtime))
    return parts


def open_tool_deps(
    runtime: Runtime,
    resources: contextlib.AsyncExitStack,
    *,
    scheduler: Scheduler,
    rooms: RoomDirectory,
    poster: Poster,
    session: aiohttp.ClientSession,
) -> BuiltinToolDeps:
    """What the built-in tools use; the fetcher's converter processes close with it."""
    fetcher = HttpFetcher(runtime.settings.tools.http_fetch, policy=runtime.fetch_policy)
    resources.push_async_callback(fetcher.aclose)
    return BuiltinToolDeps(
        scheduler=scheduler,
        rooms=rooms,
        poster=poster,
        session=session,
        fetcher=fetcher,
        ring=runtime.ring,
        clock=runtime.clock,
        restart=lambda: runtime.request_stop(EXIT_RESTART),
        admin_room=lambda: runtime.settings.access.admin_room,
    )


def open_store_notices(
    runtime: Runtime, resources: contextlib.AsyncExitStack, store: Store, poster: Poster
) -> StoreNotices:
    """The admin room is told when the store stops and starts saving (H04)."""
    notices = StoreNotices(
        poster,
        lambda: runtime.settings.access.admin_room,
        lambda: runtime.settings.chat.language,
    )
    store.watch_health(notices)
    resources.push_async_callback(notices.aclose)  # its tasks, after the drain
    return notices
