"""Scheduled jobs by command: ``!job`` for admins, ``!jobs [remove ID]`` in any room."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from bot import replies
from bot.config import Role
from bot.handlers.admin import CommandSpec
from bot.i18n import N_, _
from bot.scheduler import ScheduledJob, ScheduleError, Scheduler, TriggerKind, remove_right
from bot.store import Store
from bot.talk.events import Event

log = structlog.get_logger(__name__)

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
