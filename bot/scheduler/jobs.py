"""The job model: a scheduled job as data, to and from the store and the config."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from bot.config import LimitsSettings, Role, ScheduleSettings
from bot.errors import ConfigError
from bot.scheduler.triggers import ScheduleError, TriggerKind, build_trigger
from bot.store import JobRecord

Misfire = Literal["once", "skip"]
Source = Literal["config", "chat", "admin"]

CONFIG_OWNER = "config"


@dataclass(frozen=True)
class ScheduledJob:
    """A job as data: when (kind + expr in timezone), where, and a message or a prompt."""

    id: str
    room: str
    kind: TriggerKind
    expr: str
    timezone: str
    message: str | None = None
    prompt: str | None = None
    owner: str = CONFIG_OWNER  # actor id of the creator, or "config"
    created_by_role: Role = "admin"
    paused: bool = False
    misfire: Misfire = "once"
    source: Source = "config"
    created_at: float = 0.0  # also the phase of "every" jobs
    active_since: float = 0.0  # no run and no catch-up for fire times before this
    origin_room: str = ""  # the room it was made in; "" for the config's jobs

    @property
    def one_off(self) -> bool:
        return self.kind == "at"

    @property
    def counts_against_limits(self) -> bool:
        """Jobs people made count against ``[limits]``; the config's do not."""
        return self.source != "config"

    @property
    def may_prompt_elsewhere(self) -> bool:
        """Whether a prompt job may run in a room other than the one it was made in (#13.4).

        The config's jobs and those an admin typed as ``!job add`` were made by a person
        on purpose; in chat only admins may name another room, and schedule_add asks them
        first. Anyone else's prompt job reads and answers only the room it was made in.
        """
        return self.source in ("config", "admin") or self.created_by_role == "admin"

    def same_definition(self, other: ScheduledJob) -> bool:
        return _definition(self) == _definition(other)


def _definition(job: ScheduledJob) -> tuple[object, ...]:
    return (job.room, job.kind, job.expr, job.timezone, job.message, job.prompt, job.misfire)


@dataclass(frozen=True)
class Skipped:
    """What ``deliver`` returns when a run must not happen (A16); the reason is logged."""

    reason: str


# Runs one fire time of a job: None when delivered, Skipped when refused at fire time.
Deliver = Callable[[ScheduledJob, int], Awaitable[Skipped | None]]


class JobLimitError(ScheduleError):
    """A new job would pass ``[limits] jobs_per_person`` or ``jobs_per_room`` (#13.6)."""

    def __init__(self, reason: str) -> None:
        super().__init__("limits", reason)


def check_limits(
    job: ScheduledJob,
    owners_jobs: Sequence[ScheduledJob],
    rooms_jobs: Sequence[ScheduledJob],
    limits: LimitsSettings,
) -> None:
    """JobLimitError when one more job would pass ``[limits]`` (a job it replaces aside)."""
    mine = [j for j in owners_jobs if j.counts_against_limits and j.id != job.id]
    if len(mine) >= limits.jobs_per_person:
        raise JobLimitError(
            f"{job.owner} already has {len(mine)} scheduled jobs, the most one person may"
            f" have ([limits] jobs_per_person = {limits.jobs_per_person}); remove one first"
        )
    here = [j for j in rooms_jobs if j.counts_against_limits and j.id != job.id]
    if len(here) >= limits.jobs_per_room:
        raise JobLimitError(
            f"room {job.room} already has {len(here)} scheduled jobs, the most one room may"
            f" have ([limits] jobs_per_room = {limits.jobs_per_room}); remove one first"
        )


def describe_when(job: ScheduledJob) -> str:
    return f"{job.kind} {job.expr} ({job.timezone})"


# -- conversion to and from the store ------------------------------------------------


def job_from_record(record: JobRecord) -> ScheduledJob:
    return ScheduledJob(
        id=record.id,
        room=record.room,
        kind=_literal(record.kind, TriggerKind, "cron"),
        expr=record.expr,
        timezone=record.timezone,
        message=record.message,
        prompt=record.prompt,
        owner=record.owner,
        created_by_role=_literal(record.created_by_role, Role, "none"),
        paused=record.paused,
        misfire=_literal(record.misfire, Misfire, "once"),
        source=_literal(record.source, Source, "chat"),
        created_at=record.created_at,
        active_since=record.active_since,
        origin_room=record.origin_room,
    )


def job_record(job: ScheduledJob) -> JobRecord:
    return JobRecord(
        id=job.id,
        owner=job.owner,
        room=job.room,
        kind=job.kind,
        expr=job.expr,
        timezone=job.timezone,
        message=job.message,
        prompt=job.prompt,
        created_by_role=job.created_by_role,
        paused=job.paused,
        misfire=job.misfire,
        source=job.source,
        created_at=job.created_at,
        active_since=job.active_since,
        origin_room=job.origin_room,
    )


def _literal(value: str, kind: Any, default: Any) -> Any:
    return value if value in get_args(kind) else default


def job_from_settings(schedule: ScheduleSettings, default_timezone: str) -> ScheduledJob:
    kind: TriggerKind = "cron" if schedule.cron else "every" if schedule.every else "at"
    expr = schedule.cron or schedule.every or schedule.at or ""
    return ScheduledJob(
        id=schedule.id,
        room=schedule.room,
        kind=kind,
        expr=expr,
        timezone=schedule.timezone or default_timezone,
        message=schedule.message,
        prompt=schedule.prompt,
        misfire=schedule.misfire,
    )


def check_schedules(
    schedules: Sequence[ScheduleSettings], default_timezone: str
) -> list[ScheduledJob]:
    """The config's jobs; ConfigError names every schedule whose expression is wrong."""
    jobs: list[ScheduledJob] = []
    problems: list[tuple[str, str]] = []
    for index, schedule in enumerate(schedules):
        job = job_from_settings(schedule, default_timezone)
        try:
            build_trigger(job.kind, job.expr, job.timezone)
        except ScheduleError as exc:
            problems.append((f"schedules[{index}].{exc.field}", exc.reason))
        jobs.append(job)
    if problems:
        raise ConfigError(problems)
    return jobs


def config_rooms(admin_room: str, schedules: Iterable[ScheduleSettings]) -> frozenset[str]:
    """Rooms the config names: the admin room and every schedule's room."""
    rooms = {schedule.room for schedule in schedules}
    if admin_room:
        rooms.add(admin_room)
    return frozenset(rooms)


RemoveRight = Literal["owner", "moderator", "admin"]


def remove_right(
    job: ScheduledJob, *, actor: str, role: Role, room: str, moderator: bool
) -> RemoveRight | None:
    """Who may remove a job (DESIGN.md §7): its owner, the moderators of the room it posts
    in (from that room), and admins; None for anyone else. Config jobs are changed in the
    config file, whoever asks."""
    if job.owner == actor:
        return "owner"
    if role == "admin":
        return "admin"
    if moderator and job.room == room:
        return "moderator"
    return None
