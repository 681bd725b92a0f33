"""Admin commands: parsed without the model, one small function each, answered as Markdown."""

from __future__ import annotations

import difflib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from bot import __version__, replies
from bot.access import Access, parse_role
from bot.config import Role
from bot.directory import Directory
from bot.handlers.confirm import ConfirmHandler
from bot.i18n import N_, _, ngettext
from bot.logs import LogRing
from bot.quotas import PersonUsage, Quotas, person_of
from bot.routing import Route
from bot.scheduler import ScheduledJob, ScheduleError, Scheduler, TriggerKind, remove_right
from bot.store import Store
from bot.talk.events import Event
from bot.tools import Toolbox
from bot.tools.sources import ServerState

log = structlog.get_logger(__name__)

DEFAULT_LOG_LINES = 20
MAX_LOG_LINES = 200
LOG_LINE_CHARS = 300

Say = Callable[[Event, str], Awaitable[None]]
# A command: (event, args) -> the Markdown answer.
Command = Callable[[Event, str], Awaitable[str]]


@dataclass(frozen=True)
class CommandSpec:
    usage: str  # the syntax, as typed: not translated
    summary: str  # an English msgid marked with N_; ``describe`` translates it
    run: Command
    values: Mapping[str, object] = field(default_factory=dict)  # the summary's {placeholders}

    def describe(self) -> str:
        """The summary in the current language, its placeholders filled."""
        text = _(self.summary)
        return text.format(**self.values) if self.values else text


@dataclass
class AdminDeps:
    store: Store
    access: Access
    ring: LogRing
    say: Say
    status: Callable[[], Awaitable[dict[str, Any]]]
    reload: Callable[[], Awaitable[str]]
    prefix: Callable[[], str]
    # People's groups from Nextcloud, for !roles; None without an account.
    directory: Directory | None = None
    # Commands other features contribute (confirmations: pending/approve/cancel/restart;
    # schedules: jobs/job), registered by app.py with ``add``.
    extra: dict[str, CommandSpec] = field(default_factory=dict)


class AdminCommands:
    """The admin room's commands; routing already checked the room and the role."""

    def __init__(self, deps: AdminDeps) -> None:
        self._deps = deps
        self._commands: dict[str, CommandSpec] = {
            "help": CommandSpec(
                "help [COMMAND]", N_("every command, or one in detail"), self._help
            ),
            "status": CommandSpec("status", N_("health, model, rooms, backlog"), self._status),
            "roles": CommandSpec("roles", N_("who has which role"), self._roles),
            "role": CommandSpec(
                "role UID none|guest|user|admin|default", N_("set or clear a role"), self._role
            ),
            "logs": CommandSpec(
                "logs [N]",
                N_("the last N log lines (default {default}, max {max}), redacted"),
                self._logs,
                {"default": DEFAULT_LOG_LINES, "max": MAX_LOG_LINES},
            ),
            "reload": CommandSpec("reload", N_("re-read the config file"), self._reload),
            "rooms": CommandSpec("rooms", N_("rooms the bot is in"), self._rooms),
        }

    def add(self, name: str, spec: CommandSpec) -> None:
        self._commands[name] = spec

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._commands))

    async def handle(self, event: Event, _role: Role, route: Route) -> None:
        spec = self._commands.get(route.command)
        if spec is None:
            answer = self._unknown(route.command)
        else:
            log.info("admin.command", command=route.command, actor=event.actor.id)
            answer = await spec.run(event, route.args)
        if answer:
            await self._deps.say(event, answer)

    def _unknown(self, name: str) -> str:
        prefix = self._deps.prefix()
        close = difflib.get_close_matches(name, self._commands, n=1)
        hint = _(" Did you mean `{command}`?").format(command=prefix + close[0]) if close else ""
        return _("Unknown command `{command}`.{hint} `{help}` lists them all.").format(
            command=prefix + name, hint=hint, help=f"{prefix}help"
        )

    async def _help(self, _event: Event, args: str) -> str:
        prefix = self._deps.prefix()
        wanted = args.strip().lstrip(prefix).lower()
        if wanted:
            spec = self._commands.get(wanted)
            if spec is None:
                return self._unknown(wanted)
            return f"`{prefix}{spec.usage}` — {spec.describe()}"
        lines = [_("**Admin commands**")]
        lines += [
            f"- `{prefix}{self._commands[name].usage}` — {self._commands[name].describe()}"
            for name in self.names
        ]
        return "\n".join(lines)

    async def _status(self, _event: Event, _args: str) -> str:
        facts = await self._deps.status()
        lines = [f"**talkbot {__version__}**"]
        # The keys are English msgids (app.py marks them); unknown ones show as they are.
        lines += [f"- {_(key)}: {_show(value)}" for key, value in facts.items()]
        return "\n".join(lines)

    async def _roles(self, _event: Event, _args: str) -> str:
        access = self._deps.access
        settings = access.settings
        overrides = await self._deps.store.role_overrides()
        lines = [
            _("**Roles**"),
            _("- admins (config): {names}").format(names=_names(settings.admins)),
        ]
        if settings.users:
            users = _names(settings.users)
        elif settings.groups.user:
            users = _("only the mapped groups below")
        else:
            users = _("everyone with an account")
        lines.append(_("- users (config): {names}").format(names=users))
        lines.append(
            _("- guests, e-mail guests, federated users: {role}").format(role=settings.guest_role)
        )
        lines += self._group_lines()
        if overrides:
            lines.append(_("- set in chat:"))
            lines += [
                _("  - {uid}: {role} (by {by}, {when})").format(
                    uid=uid, role=o.role, by=o.set_by, when=_when(o.set_at)
                )
                for uid, o in sorted(overrides.items())
            ]
        return "\n".join(lines)

    def _group_lines(self) -> list[str]:
        """The group mapping, and each person Nextcloud told about lately: role and why."""
        access, directory = self._deps.access, self._deps.directory
        mapping = access.settings.groups
        if directory is None or not directory.enabled:
            return []
        lines = [_("- Nextcloud groups:")]
        lines += [
            f"  - {role}: {_names(getattr(mapping, role))}"
            for role in ("admin", "user", "guest")
            if getattr(mapping, role)
        ]
        if not mapping.mapped():
            lines.append(_("  - none mapped ([access.groups])"))
        health = directory.health()
        if health.state != "ok":
            lines.append(
                _(
                    "  - Nextcloud is {state} ({reason}): known groups are kept a while,"
                    " then only the config decides"
                ).format(state=health.state, reason=health.reason)
            )
        people = directory.known_people()
        if people:
            lines.append(_("- people Nextcloud told me about:"))
        for uid, person in people.items():
            role, source = access.explain(uid)
            groups = ", ".join(person.groups) or _("no managed group")
            lines.append(
                _("  - {uid}: {role} ({source}; groups: {groups})").format(
                    uid=uid, role=role, source=source, groups=groups
                )
            )
        return lines

    async def _role(self, event: Event, args: str) -> str:
        prefix = self._deps.prefix()
        parts = args.split()
        if len(parts) != 2:  # noqa: PLR2004 - UID and ROLE
            return f"Usage: `{prefix}role UID none|guest|user|admin|default`"
        uid, wanted = parts[0].removeprefix("users/"), parts[1].lower()
        access = self._deps.access
        if access.is_config_admin(uid):
            return f"{uid} is an admin in the config file; change it there, not in chat."
        if wanted == "default":
            removed = await self._deps.store.remove_role_override(uid)
            access.set_override(uid, None)
            await self._audit(event, uid, "default")
            current = access.user_role(uid)
            return (
                f"{uid} is back to the config's role ({current})."
                if removed
                else (f"{uid} had no role set in chat; their role is {current}.")
            )
        role = parse_role(wanted)
        if role is None:
            return f"Unknown role `{wanted}`: use none, guest, user, admin or default."
        await self._deps.store.set_role_override(uid, role, set_by=event.actor.id)
        access.set_override(uid, role)
        await self._audit(event, uid, role)
        return f"{uid} now has the role **{role}**."

    async def _audit(self, event: Event, uid: str, role: str) -> None:
        await self._deps.store.audit(
            actor=event.actor.id,
            room=event.room.token,
            action="role.set",
            outcome=role,
            detail=uid,
        )
        log.info("admin.role_set", uid=uid, role=role, by=event.actor.id)

    async def _logs(self, _event: Event, args: str) -> str:
        try:
            count = int(args) if args.strip() else DEFAULT_LOG_LINES
        except ValueError:
            return _("Usage: `{prefix}logs [N]` with N a number.").format(
                prefix=self._deps.prefix()
            )
        count = max(1, min(count, MAX_LOG_LINES))
        lines = [_short(line) for line in self._deps.ring.tail(count)]
        if not lines:
            return _("No log lines yet.")
        body = "\n".join(line.replace("```", "'''") for line in lines)
        heading = _("Last {count} log lines:").format(count=len(lines))
        return f"{heading}\n```\n{body}\n```"

    async def _reload(self, _event: Event, _args: str) -> str:
        return await self._deps.reload()

    async def _rooms(self, _event: Event, _args: str) -> str:
        rooms = await self._deps.store.list_rooms()
        if not rooms:
            return _("I don't know any rooms yet (they appear when I'm added or spoken to).")
        lines = [_("**Rooms**")]
        for room in rooms:
            kind = _("one-to-one") if room.one_to_one else _("group")
            mode = room.mode or _("default")  # "all" or "mention": as !mode takes them
            state = "" if room.joined else _(" — bot removed")
            line = _("- `{token}` {name}: {kind}, answers {mode}{state}").format(
                token=room.token,
                name=room.name or _("(no name)"),
                kind=kind,
                mode=mode,
                state=state,
            )
            lines.append(line)
        return "\n".join(lines)


def _names(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "(none)"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _short(line: str) -> str:
    return line if len(line) <= LOG_LINE_CHARS else line[:LOG_LINE_CHARS] + "…"


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value > 1e9:  # noqa: PLR2004 - an epoch timestamp
        return _when(value)
    return str(value)


def uptime_text(started_at: float, now: float | None = None) -> str:
    seconds = int((now if now is not None else time.time()) - started_at)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m"


class PendingCommands:
    """``!pending``, ``!approve``, ``!cancel`` and ``!restart``, built on the confirmations."""

    def __init__(
        self,
        confirm: ConfirmHandler,
        *,
        prefix: Callable[[], str],
        timezone: Callable[[], str],
    ) -> None:
        self._confirm = confirm
        self._prefix = prefix
        self._timezone = timezone

    def specs(self) -> dict[str, CommandSpec]:
        return {
            "pending": CommandSpec(
                "pending [CODE]",
                N_("open confirmations in every room, or one call with its arguments in full"),
                self._pending,
            ),
            "approve": CommandSpec(
                "approve CODE",
                N_("run a waiting action for its requester (where allowed)"),
                self._approve,
            ),
            "cancel": CommandSpec("cancel CODE", N_("cancel a waiting action"), self._cancel),
            "restart": CommandSpec(
                "restart",
                N_("stop gracefully so systemd starts a fresh process (asks first)"),
                self._restart,
            ),
        }

    async def _restart(self, event: Event, _args: str) -> str:
        """Asks for a yes like any dangerous tool (its prompt is the answer), then stops."""
        await self._confirm.request_command(event, "admin", "bot_restart")
        return ""

    async def _pending(self, _event: Event, args: str) -> str:
        code = args.strip()
        if code:
            return await self._confirm.details(code, self._timezone())
        return await self._confirm.listing(self._timezone())

    async def _approve(self, event: Event, args: str) -> str:
        code = args.strip()
        if not code:
            return _("Usage: `{prefix}approve CODE` (see `{prefix}pending`)").format(
                prefix=self._prefix()
            )
        return await self._confirm.approve_by_admin(code, event.actor.id)

    async def _cancel(self, event: Event, args: str) -> str:
        code = args.strip()
        if not code:
            return _("Usage: `{prefix}cancel CODE` (see `{prefix}pending`)").format(
                prefix=self._prefix()
            )
        return await self._confirm.cancel_by_admin(code, event.actor.id)


JOB_USAGE = (
    "job add ID [room=TOKEN] [tz=ZONE] cron M H DOM MON DOW|every 30m|at 2026-12-24T09:00"
    " -- TEXT (TEXT starting with 'prompt:' runs as a model turn); "
    "job remove|pause|resume|run ID"
)


class JobCommands:
    """``!job add|remove|pause|resume|run``: jobs made by admins in the admin room."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        prefix: Callable[[], str],
        admin_room: Callable[[], str],
        timezone: Callable[[], str],
    ) -> None:
        self._scheduler = scheduler
        self._prefix = prefix
        self._admin_room = admin_room
        self._timezone = timezone

    def specs(self) -> dict[str, CommandSpec]:
        return {"job": CommandSpec(JOB_USAGE, N_("add or change scheduled jobs"), self._job)}

    async def _job(self, event: Event, args: str) -> str:
        verb, _sep, rest = args.strip().partition(" ")
        verb, rest = verb.lower(), rest.strip()
        if verb == "add":
            return await self._add(event, rest)
        actions = {
            "remove": (self._scheduler.remove, N_("Job `{id}`: removed.")),
            "pause": (self._scheduler.pause, N_("Job `{id}`: paused.")),
            "resume": (self._scheduler.resume, N_("Job `{id}`: resumed.")),
        }
        if verb in actions and rest:
            act, done = actions[verb]
            found = await act(rest)
            return _(done if found else N_("No job `{id}`.")).format(id=rest)
        if verb == "run" and rest:
            outcome = await self._scheduler.run_now(rest)
            if outcome is None:
                return _("No job `{id}`.").format(id=rest)
            return _("Job `{id}` ran: {outcome}.").format(id=rest, outcome=outcome)
        return self._usage()

    def _usage(self) -> str:
        return _("Usage: `{usage}`").format(usage=self._prefix() + JOB_USAGE)

    async def _add(self, event: Event, text: str) -> str:
        try:
            job = await self._scheduler.add(await self._parse(event, text))
        except ScheduleError as exc:
            return _("Job not added: {reason}").format(reason=exc)
        except ValueError as exc:
            return _("Job not added: {reason}.").format(reason=exc) + " " + self._usage()
        return _("Added: {job}").format(job=self._scheduler.summary(job))

    async def _parse(self, event: Event, text: str) -> ScheduledJob:
        head, sep, body = text.partition(" -- ")
        words = head.split()
        if not sep or not body.strip() or len(words) < 3:  # noqa: PLR2004 - ID KIND EXPR
            raise ValueError(_("give an id, a kind with its expression, then -- and the text"))
        job_id, options, kind, expr = _job_words(words)
        room = options.get("room", self._admin_room())
        body = body.strip()
        is_prompt = body.lower().startswith("prompt:")
        return ScheduledJob(
            id=job_id,
            room=room,
            kind=kind,
            expr=expr,
            timezone=options.get("tz", self._timezone()),
            message=None if is_prompt else body,
            prompt=body[len("prompt:") :].strip() if is_prompt else None,
            owner=event.actor.id,
            created_by_role="admin",
            source="admin",
            origin_room=event.room.token,
        )


class RoomJobs:
    """``!jobs`` and ``!jobs remove ID`` (DESIGN.md §7): in any room, a person's own jobs;
    a room's moderators and admins see every job of that room with its owner and may
    remove any of them; in the admin room, admins see and remove every job."""

    def __init__(self, scheduler: Scheduler, store: Store, *, prefix: Callable[[], str]) -> None:
        self._scheduler = scheduler
        self._store = store
        self._prefix = prefix

    async def in_room(self, event: Event, role: Role, args: str) -> str:
        """The room command, for anyone with a role."""
        verb, job_id = _jobs_args(args)
        if verb == "remove" and job_id:
            return await self._remove(event, role, job_id)
        if verb:
            return replies.jobs_usage(self._prefix())
        if event.actor.is_moderator or role == "admin":
            return await self._scheduler.room_listing(event.room.token, event.actor.id)
        return await self._scheduler.listing(event.actor.id)

    async def in_admin_room(self, event: Event, args: str) -> str:
        """The admin command: every job, and removing any of them."""
        verb, job_id = _jobs_args(args)
        if verb == "remove" and job_id:
            return await self._remove(event, "admin", job_id)
        if verb:
            return replies.jobs_usage(self._prefix())
        return await self._scheduler.listing(None)

    async def _remove(self, event: Event, role: Role, job_id: str) -> str:
        job = await self._scheduler.get(job_id)
        right = (
            None
            if job is None
            else remove_right(
                job,
                actor=event.actor.id,
                role=role,
                room=event.room.token,
                moderator=event.actor.is_moderator,
            )
        )
        if job is None or right is None:
            return replies.job_not_removable(job_id)
        if job.source == "config":
            return replies.job_from_config(job.id)
        await self._scheduler.remove(job.id)
        await self._store.audit(
            actor=event.actor.id,
            room=event.room.token,
            action="schedule.remove",
            outcome=right,
            detail=f"{job.id} of {job.owner} in {job.room}",
        )
        log.info("schedule.removed_by", job=job.id, by=event.actor.id, right=right)
        return replies.job_removed(job.id, job.owner, own=right == "owner")


def _jobs_args(args: str) -> tuple[str, str]:
    """``remove ID`` -> ("remove", "ID"); anything else keeps what it cannot parse in verb."""
    words = args.split()
    if not words:
        return "", ""
    if words[0].lower() == "remove" and len(words) == 2:  # noqa: PLR2004 - remove ID
        return "remove", words[1]
    return words[0].lower(), ""


def _job_words(words: list[str]) -> tuple[str, dict[str, str], TriggerKind, str]:
    job_id, rest = words[0], words[1:]
    options: dict[str, str] = {}
    while rest and "=" in rest[0]:
        key, _sep, value = rest.pop(0).partition("=")
        if key not in ("room", "tz"):
            raise ValueError(_("unknown option {option}").format(option=repr(key)))
        options[key] = value
    if not rest or rest[0] not in ("cron", "every", "at"):
        raise ValueError(_("the kind must be cron, every or at"))
    kinds: dict[str, TriggerKind] = {"cron": "cron", "every": "every", "at": "at"}
    return job_id, options, kinds[rest[0]], " ".join(rest[1:])


class UsageCommands:
    """``!usage`` (DESIGN.md §7): in any room, the asker's own tokens today and their
    limit; in the admin room, anyone's (``!usage UID``) or the day's top people and rooms."""

    def __init__(
        self, quotas: Quotas, *, role_of: Callable[[str], Role], prefix: Callable[[], str]
    ) -> None:
        self._quotas = quotas
        self._role_of = role_of
        self._prefix = prefix

    def specs(self) -> dict[str, CommandSpec]:
        return {
            "usage": CommandSpec(
                "usage [UID]",
                N_("model tokens today: one person's, or the top people and rooms"),
                self.in_admin_room,
            )
        }

    async def in_room(self, event: Event, role: Role, args: str) -> str:
        """The room command, for anyone with a role: their own figures only."""
        me = person_of(event.actor.id)
        if args.strip() and person_of(args.strip()) != me:
            return replies.usage_only_own(self._prefix())
        usage = await self._quotas.of_person(me, role)
        room_limit = self._quotas.limits.tokens_per_room_day
        room = None
        if room_limit and not usage.exempt:
            room = ((await self._quotas.of_room(event.room.token)).total, room_limit)
        return "\n".join(self._person_lines(usage, own=True, room=room))

    async def in_admin_room(self, _event: Event, args: str) -> str:
        """The admin command: one person's figures, or the whole day's."""
        asked = args.strip()
        if not asked:
            return await self._summary()
        actor = asked if "/" in asked else f"users/{asked}"
        usage = await self._quotas.of_person(person_of(asked), self._role_of(actor))
        return "\n".join(self._person_lines(usage, own=False))

    def _person_lines(
        self, usage: PersonUsage, *, own: bool, room: tuple[int, int] | None = None
    ) -> list[str]:
        """Heading, tokens, limit, then the room's (used, limit) if given, and the cost."""
        tokens, quotas = usage.tokens, self._quotas
        lines = [
            replies.usage_heading(
                None if own else usage.person, usage.day.isoformat(), quotas.timezone
            ),
            replies.usage_tokens(tokens.total, tokens.prompt, tokens.completion, tokens.turns),
        ]
        if tokens.estimated:
            lines.append(replies.usage_estimated())
        if usage.limit:
            now = quotas.now()
            lines.append(replies.usage_limit(usage.limit, tokens.total, usage.resets_at, now=now))
        else:
            lines.append(replies.usage_unlimited(exempt=usage.exempt))
        if room is not None:
            lines.append(replies.usage_room(*room))
        cost = quotas.cost(tokens)
        if cost is not None:
            lines.append(replies.usage_cost(cost, quotas.limits.currency))
        return lines

    async def _summary(self) -> str:
        quotas = self._quotas
        summary = await quotas.summary()
        total, limits = summary.total, quotas.limits
        lines = [replies.usage_summary_heading(quotas.today().isoformat(), quotas.timezone)]
        if not total.turns and not total.total:
            return "\n".join([*lines, replies.usage_nothing_yet()])
        lines.append(replies.usage_tokens(total.total, total.prompt, total.completion, total.turns))
        if total.estimated:
            lines.append(replies.usage_estimated())
        cost = quotas.cost(total)
        if cost is not None:
            lines.append(replies.usage_cost(cost, limits.currency))
        lines.append(replies.usage_limits(limits.tokens_per_day, limits.tokens_per_room_day))
        for kind, rows in (("people", summary.people), ("rooms", summary.rooms)):
            lines += replies.usage_top(
                kind, [(name, t.total, t.turns, t.estimated) for name, t in rows]
            )
        return "\n".join(lines)


class ToolsCommand:
    """``!tools``: each MCP server and its state, and the tools each role is offered."""

    def __init__(
        self, toolbox: Callable[[], Toolbox], sources: Callable[[], Sequence[ServerState]]
    ) -> None:
        self._toolbox = toolbox
        self._sources = sources

    def spec(self) -> CommandSpec:
        return CommandSpec(
            "tools", N_("MCP servers, and the tools each role is offered"), self.overview
        )

    async def overview(self, _event: Event, _args: str) -> str:
        lines = [_("**MCP servers**")]
        states = self._sources()
        lines += [server_line(state) for state in states] or [
            _("- none configured ([[mcp.servers]])")
        ]
        toolbox = self._toolbox()
        lines.append(_("**Offered, by role**"))
        for role in ("guest", "user", "admin"):
            names = [spec["function"]["name"] for spec in toolbox.specs_for(role)]
            shown = ", ".join(f"`{name}`" for name in names) or _("none")
            lines.append(f"- {role}: {shown}")
        asking = [name for name in toolbox.names if (tool := toolbox.get(name)) and tool.confirm]
        if asking:
            shown = ", ".join(f"`{name}`" for name in asking)
            lines.append(_("Always ask the requester first: {names}").format(names=shown))
        return "\n".join(lines)


def server_line(state: ServerState) -> str:
    """One MCP server's state, for ``!tools`` and ``!status``."""
    since = _when(state.since)
    if state.state == "ready":
        return ngettext(
            "- `{name}` ({transport}): ready, {count} tool",
            "- `{name}` ({transport}): ready, {count} tools",
            len(state.tools),
        ).format(name=state.name, transport=state.transport, count=len(state.tools))
    if state.state == "failed":
        retry = (
            _("; next try in {seconds} s").format(seconds=round(state.retry_in_s))
            if state.retry_in_s is not None
            else ""
        )
        return _("- `{name}` ({transport}): not connected since {since}: {reason}{retry}").format(
            name=state.name,
            transport=state.transport,
            since=since,
            reason=state.reason,
            retry=retry,
        )
    return _("- `{name}` ({transport}): {state}").format(
        name=state.name, transport=state.transport, state=_(_STATES[state.state])
    )


_STATES = {"connecting": N_("connecting"), "stopped": N_("stopped")} | {
    "ready": N_("ready"),
    "failed": N_("not connected"),
}
