"""How the handlers are wired to each other, for the composition root (app.py): the route
table, the admin room's command table and the confirmations' two halves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import structlog

from bot import replies
from bot.access import Access
from bot.agent.history import History
from bot.config import Role, Settings
from bot.directory import Directory
from bot.errors import ConfigError, TalkError
from bot.handlers.admin import AdminCommands, AdminDeps, CommandSpec
from bot.handlers.approvals import Approvals
from bot.handlers.chat import ChatHandler
from bot.handlers.confirm import ConfirmHandler
from bot.handlers.job_commands import JobCommands, RoomJobs
from bot.handlers.pending_commands import PendingCommands
from bot.handlers.room_commands import RoomCommands
from bot.handlers.router import RouteHandler, Router
from bot.handlers.tools_command import ToolsCommand
from bot.handlers.usage_commands import UsageCommands
from bot.i18n import N_
from bot.metered import MeteredConfirmations
from bot.reloading import reload_everywhere
from bot.routing import Route, RouteKind
from bot.runtime import Runtime
from bot.scheduler import Scheduler
from bot.status import status_facts
from bot.store import InboxItem, Store
from bot.talk.events import Event, parse_event
from bot.talk.poster import Poster
from bot.tools.sources import ServerState

log = structlog.get_logger(__name__)


def build_confirmations(
    runtime: Runtime, store: Store, chat: ChatHandler, access: Access, history: History
) -> tuple[Approvals, ConfirmHandler]:
    """Pending actions: the approvals (asking, running, resuming) and the answers' handler."""
    confirmations = MeteredConfirmations(
        store, runtime.clock, runtime.settings.confirm, metrics=runtime.metrics
    )
    prefix = command_prefix(runtime)
    approvals = Approvals(
        confirmations=confirmations,
        chat=chat,
        toolbox=lambda: runtime.running.toolbox,
        access=access,
        history=history,
        timezone=lambda: runtime.settings.chat.timezone,
        command_prefix=prefix,
    )
    confirm = ConfirmHandler(
        confirmations=confirmations, approvals=approvals, chat=chat, command_prefix=prefix
    )

    async def reconfigure(new: Settings) -> None:
        confirmations.reconfigure(new.confirm)

    runtime.reload_hooks.append(reconfigure)
    return approvals, confirm


def build_admin(
    runtime: Runtime,
    *,
    store: Store,
    access: Access,
    directory: Directory,
    chat: ChatHandler,
    approvals: Approvals,
    scheduler: Scheduler,
    jobs: RoomJobs,
    usage: UsageCommands,
) -> AdminCommands:
    """The admin room's commands, with what they may see and change."""

    def settings() -> Settings:  # read at call time: !reload swaps the settings
        return runtime.settings

    prefix = command_prefix(runtime)

    def mcp_states() -> Sequence[ServerState]:
        mcp = runtime.running.mcp
        return mcp.states() if mcp is not None else ()

    extras = {
        "tools": ToolsCommand(lambda: runtime.running.toolbox, mcp_states).spec(),
        **PendingCommands(approvals, prefix=prefix).specs(),
        **JobCommands(
            scheduler,
            prefix=prefix,
            admin_room=lambda: settings().access.admin_room,
            timezone=lambda: settings().chat.timezone,
        ).specs(),
        "jobs": CommandSpec(
            "jobs [remove ID]", N_("every scheduled job, or remove one"), jobs.in_admin_room
        ),
        **usage.specs(),
    }
    deps = AdminDeps(
        store=store,
        access=access,
        ring=runtime.ring,
        say=chat.say,
        status=lambda: status_facts(runtime),
        reload=lambda: reload_everywhere(runtime, runtime.running),
        prefix=prefix,
        directory=directory,
    )
    return AdminCommands(deps, extras)


def build_routes(
    runtime: Runtime,
    *,
    store: Store,
    history: History,
    poster: Poster,
    chat: ChatHandler,
    confirm: ConfirmHandler,
    admin: AdminCommands,
    scheduler: Scheduler,
    jobs: RoomJobs,
    usage: UsageCommands,
) -> dict[RouteKind, RouteHandler]:
    """The route table, built once: the handler of each route kind. The router keeps the
    room registry and the history itself; IGNORE and REMEMBER need nothing more."""

    async def room_jobs(event: Event, role: Role, route: Route) -> None:
        await chat.say(event, await jobs.in_room(event, role, route.args))

    async def own_usage(event: Event, role: Role, route: Route) -> None:
        await chat.say(event, await usage.in_room(event, role, route.args))

    room_commands = RoomCommands(
        store=store,
        history=history,
        say=chat.say,
        prefix=command_prefix(runtime),
        commands={"jobs": room_jobs, "usage": own_usage},
    )
    return {
        RouteKind.CHAT: confirm.on_chat,  # a requester's new message cancels what waits
        RouteKind.CONFIRM: confirm.on_answer,
        RouteKind.DENY: confirm.on_answer,
        RouteKind.NOT_REQUESTER: confirm.on_not_requester,
        RouteKind.REACTION: confirm.on_reaction,
        RouteKind.ADMIN_COMMAND: admin.on_command,
        RouteKind.ROOM_COMMAND: room_commands.on_command,
        RouteKind.REFUSE_COMMAND: room_commands.on_refused,
        RouteKind.MEMBER_LEFT: member_left_handler(runtime, scheduler, poster),
    }


def member_left_handler(runtime: Runtime, scheduler: Scheduler, poster: Poster) -> RouteHandler:
    """A person left a room: their jobs there pause, and the room is told."""

    async def on_member_left(event: Event, _role: Role, route: Route) -> None:
        paused = await scheduler.pause_for_departure(route.args, event.room.token)
        if not paused:
            return
        prefix = runtime.settings.access.command_prefix
        note = replies.jobs_paused_for_departure(route.args, paused, prefix)
        try:  # not as a reply: Talk refuses replies to system messages
            await poster.send_message(event.room.token, note)
        except TalkError as exc:
            log.warning("schedule.departure_note_failed", error=type(exc).__name__)

    return on_member_left


def dispatcher_notice(
    router: Router, chat: ChatHandler, text: Callable[[], str]
) -> Callable[[InboxItem], Awaitable[None]]:
    """A notice the dispatcher sends on its own (the apology, busy), in the person's
    language like everything the router hands on."""

    async def notify(item: InboxItem) -> None:
        event = parse_event(item.body)
        router.speak_to(event.actor.id)
        await chat.say(event, text())

    return notify


def command_prefix(runtime: Runtime) -> Callable[[], str]:
    """``[access] command_prefix``, read at call time: !reload swaps the settings."""
    return lambda: runtime.settings.access.command_prefix


def reconcile_schedules(runtime: Runtime) -> Callable[[Settings], Awaitable[None]]:
    """After a reload: the config's jobs as the new settings declare them."""

    async def reconcile(new: Settings) -> None:
        try:
            await runtime.running.scheduler.reload(new.schedules)
        except ConfigError as exc:
            log.warning("schedule.reload_refused", reason=exc.one_line())

    return reconcile
