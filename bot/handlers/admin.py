"""Admin commands: parsed without the model, one small function each, answered as Markdown.

This module holds the command table (``AdminCommands``) and the core commands; the feature
groups contribute theirs with ``add``: ``pending_commands``, ``job_commands``,
``usage_commands``, ``tools_command``."""

from __future__ import annotations

import difflib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from bot import __version__
from bot.access import Access, parse_role
from bot.config import Role
from bot.directory import Directory
from bot.i18n import N_, _
from bot.logs import LogRing
from bot.routing import Route
from bot.store import Store
from bot.talk.events import Event

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


class AdminCommands:
    """The admin room's commands; routing already checked the room and the role."""

    def __init__(self, deps: AdminDeps, more: Mapping[str, CommandSpec] | None = None) -> None:
        """``more``: the command groups other features bring (jobs, pending actions,
        usage, tools), given by the composition root."""
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
            **(more or {}),
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._commands))

    async def on_command(self, event: Event, _role: Role, route: Route) -> None:
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
                    uid=uid, role=o.role, by=o.set_by, when=utc_text(o.set_at)
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


def utc_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _short(line: str) -> str:
    return line if len(line) <= LOG_LINE_CHARS else line[:LOG_LINE_CHARS] + "…"


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value > 1e9:  # noqa: PLR2004 - an epoch timestamp
        return utc_text(value)
    return str(value)


def uptime_text(started_at: float, now: float | None = None) -> str:
    seconds = int((now if now is not None else time.time()) - started_at)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m"
