"""Scheduled jobs: triggers, the run ledger, catch-up policy, and APScheduler as the timer.

The store holds the job definitions and a ledger with one row per (job, fire time); a fire
time is entered there before anything is delivered, so it is delivered at most once, also
across a crash and a restart. APScheduler only wakes us up: each wake-up works out from the
ledger which fire time is due and applies the job's misfire policy, so a late or missed
wake-up never turns into a burst. What a run does (post a message, run an agent turn) is
the injected ``deliver`` callable; this module never imports the agent.
"""

# APScheduler 3 ships no type hints; its objects are typed Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot import i18n, replies
from bot.access import at_least
from bot.clock import Clock
from bot.config import EVERY_PATTERN, LimitsSettings, Role, ScheduleSettings
from bot.crashpoints import crash_point
from bot.errors import ConfigError, TalkbotError
from bot.quotas import Quotas
from bot.store import JobRecord, RunRecord, Store

log = structlog.get_logger(__name__)

TriggerKind = Literal["cron", "every", "at"]
Misfire = Literal["once", "skip"]
Source = Literal["config", "chat", "admin"]
RunOutcome = Literal["done", "skipped", "failed", "duplicate"]

CONFIG_OWNER = "config"
DEFAULT_GRACE_S = 120.0  # a fire time at most this late is on time, whatever the policy
LEDGER_RETENTION_S = 30 * 24 * 3600.0
STOP_DEADLINE_S = 10.0
# The timer's APScheduler job defaults, explicit because its own (misfire_grace_time=1 s,
# coalesce) silently drop late wake-ups (R10). A wake-up is never dropped here; the ledger
# and the job's misfire policy decide what a late one runs.
TIMER_JOB_DEFAULTS: dict[str, Any] = {
    "misfire_grace_time": None,
    "coalesce": True,
    "max_instances": 1,
}

CRON_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_CRON_HINTS = {
    "minute": "the minute field (0-59)",
    "hour": "the hour field (0-23)",
    "day": "the day-of-month field (1-31)",
    "month": "the month field (1-12 or jan-dec)",
    "day_of_week": "the day-of-week field (0-7 or sun-sat; 0 and 7 are Sunday)",
}
CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FIRST_SPAN_S = 120.0
_MAX_STEPS = 10_000
_ID_ALPHABET = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ScheduleError(TalkbotError):
    """A schedule expression is invalid; ``field`` names the key (cron, every, at, ...)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class JobLimitError(ScheduleError):
    """A new job would pass ``[limits] jobs_per_person`` or ``jobs_per_room`` (#13.6)."""

    def __init__(self, reason: str) -> None:
        super().__init__("limits", reason)


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


# -- triggers ------------------------------------------------------------------------


@dataclass(frozen=True)
class JobTrigger:
    """Fire times of one job as epoch seconds, from an APScheduler trigger."""

    inner: BaseTrigger
    zone: ZoneInfo
    # Cron jobs at a fixed hour fire once when the clock falls back and repeats that hour.
    once_per_wall_time: bool = False
    run_date: float | None = None  # for "at": the single fire time

    def next_after(self, epoch: float) -> int | None:
        """The first fire time strictly after ``epoch``."""
        if self.run_date is not None:
            return int(self.run_date) if self.run_date > epoch else None
        candidate = self.inner.get_next_fire_time(None, _utc(epoch + 0.001))
        for _ in range(_MAX_STEPS):
            if candidate is None:
                return None
            if not self._repeated_wall_time(candidate):
                return int(candidate.timestamp())
            candidate = self.inner.get_next_fire_time(None, _utc(candidate.timestamp() + 0.001))
        return None

    def fire_times(self, after: float, until: float, limit: int = 1000) -> list[int]:
        """Fire times in (after, until], at most ``limit`` of them."""
        times: list[int] = []
        current = self.next_after(after)
        while current is not None and current <= until and len(times) < limit:
            times.append(current)
            current = self.next_after(current)
        return times

    def latest_between(self, after: float, until: float) -> int | None:
        """The last fire time in (after, until]; searches back in growing windows."""
        span = _FIRST_SPAN_S
        while until > after:
            start = max(after, until - span)
            found = self.fire_times(start, until, limit=_MAX_STEPS)
            if found:
                return found[-1]
            if start <= after:
                return None
            span *= 8
        return None

    def _repeated_wall_time(self, moment: datetime) -> bool:
        if not self.once_per_wall_time:
            return False
        local = moment.astimezone(self.zone)
        return local.fold == 1 and local.utcoffset() != local.replace(fold=0).utcoffset()


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError("timezone", f"unknown IANA timezone {name!r}") from None


def build_trigger(kind: str, expr: str, timezone: str, *, anchor: float = 0.0) -> JobTrigger:
    """The trigger of an expression; ScheduleError names the field that is wrong.

    ``anchor`` is when an "every" job was created: it fires at anchor + k * interval.
    """
    zone = zone_of(timezone)
    if kind == "cron":
        return _cron_trigger(expr, zone)
    if kind == "every":
        seconds = every_seconds(expr)
        start = _utc(int(anchor) + seconds)
        return JobTrigger(IntervalTrigger(seconds=seconds, start_date=start, timezone=zone), zone)
    if kind == "at":
        run_date = parse_at(expr, zone)
        return JobTrigger(DateTrigger(run_date, timezone=zone), zone, run_date=run_date.timestamp())
    raise ScheduleError("when", "give one of cron, every or at")


def every_seconds(expr: str) -> int:
    match = EVERY_PATTERN.match(expr)
    if not match or int(match.group(1)) == 0:
        raise ScheduleError("every", "must be a number and a unit, like 90s, 30m, 2h or 1d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_at(expr: str, zone: ZoneInfo) -> datetime:
    """An ISO date-time; without an offset it is a wall-clock time in ``zone``."""
    try:
        moment = datetime.fromisoformat(expr.strip())
    except ValueError:
        raise ScheduleError("at", "must be an ISO date-time like 2026-12-24T09:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.replace(microsecond=0)


def _cron_trigger(expr: str, zone: ZoneInfo) -> JobTrigger:
    parts = expr.split()
    if len(parts) != len(CRON_FIELDS):
        raise ScheduleError(
            "cron",
            f"needs five fields (minute hour day-of-month month day-of-week), got {len(parts)}",
        )
    values = dict(zip(CRON_FIELDS, parts, strict=True))
    values["day_of_week"] = _checked_weekdays(values["day_of_week"])
    for name, value in values.items():
        try:
            CronTrigger(timezone=zone, **{name: value})
        except ValueError:
            raise ScheduleError("cron", f"{_CRON_HINTS[name]} is not valid: {value!r}") from None
    fixed_hour = not values["hour"].startswith("*")
    day, weekday = parts[2], parts[4]
    if day.startswith("*") or weekday.startswith("*"):
        return JobTrigger(CronTrigger(timezone=zone, **values), zone, fixed_hour)
    # crontab runs when either the day of month or the day of week matches; APScheduler
    # would require both.
    by_day = CronTrigger(timezone=zone, **{**values, "day_of_week": "*"})
    by_weekday = CronTrigger(timezone=zone, **{**values, "day": "*"})
    return JobTrigger(OrTrigger([by_day, by_weekday]), zone, fixed_hour)


def _checked_weekdays(field: str) -> str:
    try:
        return crontab_weekdays(field)
    except ValueError:
        hint = _CRON_HINTS["day_of_week"]
        raise ScheduleError("cron", f"{hint} is not valid: {field!r}") from None


def crontab_weekdays(field: str) -> str:
    """Crontab day-of-week (0 and 7 = Sunday) as APScheduler day names (which count 0 = Monday).

    Every element is expanded to a set of days first, so ranges, lists and steps keep
    their crontab meaning: "*/2" is Sunday, Tuesday, Thursday, Saturday.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        days |= _weekday_part(part)
    return ",".join(CRONTAB_DAYS[day] for day in sorted(days))


def _weekday_part(part: str) -> set[int]:
    base, slash, step_text = part.partition("/")
    step = int(step_text) if slash and step_text.isdigit() else (0 if slash else 1)
    if step < 1:
        raise ValueError(f"bad step in {part!r}")
    if base == "*":
        low, high = 0, 6
    elif "-" in base:
        first, last = base.split("-", 1)
        low, high = _weekday(first), _weekday(last, range_end=True)
    else:
        low = _weekday(base)
        high = 7 if slash else low
    if low > high:
        raise ValueError(f"range {base!r} runs backwards")
    return {day % 7 for day in range(low, high + 1, step)}


def _weekday(text: str, *, range_end: bool = False) -> int:
    name = text.strip().lower()
    if name.isdigit() and int(name) <= 7:  # noqa: PLR2004 - crontab's 7 is Sunday again
        return int(name)
    if name in CRONTAB_DAYS:
        index = CRONTAB_DAYS.index(name)
        return 7 if range_end and index == 0 else index
    raise ValueError(f"not a day of the week: {text!r}")


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


# -- the timer -----------------------------------------------------------------------


WakeUp = Callable[[str], Coroutine[Any, Any, None]]


class Timer:
    """APScheduler's AsyncIOScheduler with one one-shot wake-up per job, in memory only."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.aps = AsyncIOScheduler(
            timezone=UTC,
            jobstores={"default": MemoryJobStore()},
            job_defaults=dict(TIMER_JOB_DEFAULTS),
        )

    @property
    def job_defaults(self) -> dict[str, Any]:
        """What the timer's jobs get unless told otherwise (R10 asserts these)."""
        return dict(self.aps._job_defaults)  # no public getter in APScheduler

    def start(self) -> None:
        if not self.aps.running:
            self.aps.start()

    def stop(self) -> None:
        if self.aps.running:
            self.aps.shutdown(wait=False)

    def arm(self, job_id: str, fire_time: float, wake: WakeUp) -> None:
        # The delay comes from the injected clock; APScheduler counts it on its own clock.
        delay = max(0.0, fire_time - self._clock.now())
        run_date = datetime.now(UTC) + timedelta(seconds=delay)
        trigger = DateTrigger(run_date, timezone=UTC)
        self.aps.add_job(wake, trigger, args=(job_id,), id=job_id, replace_existing=True)

    def disarm(self, job_id: str) -> None:
        try:
            self.aps.remove_job(job_id)
        except JobLookupError:
            return

    def armed(self) -> set[str]:
        return {job.id for job in self.aps.get_jobs()}


# -- the scheduler -------------------------------------------------------------------


class Scheduler:
    """Jobs from the config, chat and admins; each fire time runs at most once."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        deliver: Deliver,
        *,
        default_timezone: str = "UTC",
        grace_s: float = DEFAULT_GRACE_S,
        timer: Timer | None = None,
        limits: Callable[[], LimitsSettings] = LimitsSettings,
    ) -> None:
        self._store = store
        self._clock = clock
        self._deliver = deliver
        self._limits = limits  # read at each add: !reload may change them
        self.default_timezone = default_timezone
        self._grace_s = grace_s
        self.timer = timer or Timer(clock)
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._pruned_at = 0.0

    @property
    def running(self) -> bool:
        return self._running

    # -- lifecycle -------------------------------------------------------------------

    async def start(
        self, schedules: Sequence[ScheduleSettings] = (), *, alive: Sequence[str] = ()
    ) -> None:
        """Reconcile the config's jobs, catch up on what was missed, arm the timer.
        ``alive``: other replicas whose runs in progress are theirs, not interrupted."""
        await self.reconcile(schedules)
        await self.interrupt_runs(alive)
        self.timer.start()
        self._running = True
        jobs = await self.jobs()
        for job in jobs:
            self._spawn(self._wake(job.id))
        log.info("schedule.started", jobs=len(jobs))

    async def stop(self, deadline_s: float = STOP_DEADLINE_S) -> None:
        """Stop the timer; give runs in flight ``deadline_s`` to finish, then cancel them."""
        self._running = False
        self.timer.stop()
        tasks = list(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until every run started by the timer or at start-up has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- jobs as data ----------------------------------------------------------------

    async def jobs(
        self, owner: str | None = None, *, room: str | None = None
    ) -> list[ScheduledJob]:
        records = await self._store.list_jobs(owner=owner, room=room)
        return [job_from_record(r) for r in records]

    async def get(self, job_id: str) -> ScheduledJob | None:
        record = await self._store.get_job(job_id)
        return None if record is None else job_from_record(record)

    def trigger(self, job: ScheduledJob) -> JobTrigger:
        return build_trigger(job.kind, job.expr, job.timezone, anchor=job.created_at)

    def next_fire_time(self, job: ScheduledJob) -> int | None:
        if job.paused:
            return None
        return self.trigger(job).next_after(max(self._clock.now(), job.active_since))

    async def new_id(self) -> str:
        while True:
            job_id = "j" + secrets.token_hex(3)
            if await self._store.get_job(job_id) is None:
                return job_id

    async def add(self, job: ScheduledJob) -> ScheduledJob:
        """Validate, persist and arm a job; ScheduleError names a bad field or the limit."""
        if not _ID_ALPHABET.match(job.id):
            raise ScheduleError("id", "use 1-64 letters, digits, '_', '.' or '-'")
        await self._check_limits(job)
        now = float(int(self._clock.now()))
        job = replace(job, created_at=job.created_at or now, active_since=now)
        trigger = self.trigger(job)
        if trigger.next_after(now) is None:
            raise ScheduleError(job.kind, "this time is in the past, or the job would never run")
        await self._store.save_job(job_record(job))
        log.info("schedule.added", job=job.id, source=job.source, room=job.room, kind=job.kind)
        self._arm(job)
        return job

    async def _check_limits(self, job: ScheduledJob) -> None:
        """JobLimitError when one more job would pass ``[limits]`` (a job it replaces aside)."""
        if not job.counts_against_limits:
            return
        limits = self._limits()
        mine = [j for j in await self.jobs(job.owner) if j.counts_against_limits and j.id != job.id]
        if len(mine) >= limits.jobs_per_person:
            raise JobLimitError(
                f"{job.owner} already has {len(mine)} scheduled jobs, the most one person may"
                f" have ([limits] jobs_per_person = {limits.jobs_per_person}); remove one first"
            )
        here = [
            j for j in await self.jobs(room=job.room) if j.counts_against_limits and j.id != job.id
        ]
        if len(here) >= limits.jobs_per_room:
            raise JobLimitError(
                f"room {job.room} already has {len(here)} scheduled jobs, the most one room may"
                f" have ([limits] jobs_per_room = {limits.jobs_per_room}); remove one first"
            )

    async def remove(self, job_id: str) -> bool:
        self.timer.disarm(job_id)
        removed = await self._store.delete_job(job_id)
        if removed:
            log.info("schedule.removed", job=job_id)
        return removed

    async def pause(self, job_id: str) -> bool:
        job = await self.get(job_id)
        if job is None:
            return False
        await self._store.save_job(job_record(replace(job, paused=True)))
        self.timer.disarm(job_id)
        log.info("schedule.paused", job=job_id)
        return True

    async def pause_for_departure(self, owner: str, room: str) -> list[str]:
        """Pause the jobs ``owner`` made in or for ``room``, which they have left (#13.4):
        a job must not go on reading or posting to a room its creator is no longer in."""
        affected = [job for job in await self.jobs(owner) if room in (job.room, job.origin_room)]
        paused = [job.id for job in affected if not job.paused and await self.pause(job.id)]
        if paused:
            log.info("schedule.paused_for_departure", room=room, owner=owner, jobs=paused)
        return paused

    async def resume(self, job_id: str) -> bool:
        """Resume without catching up on fire times that passed while paused."""
        job = await self.get(job_id)
        if job is None:
            return False
        job = replace(job, paused=False, active_since=float(int(self._clock.now())))
        await self._store.save_job(job_record(job))
        self._arm(job)
        log.info("schedule.resumed", job=job_id)
        return True

    async def run_now(self, job_id: str) -> RunOutcome | None:
        """Run a job once now, outside its schedule (admin ``!job run``)."""
        job = await self.get(job_id)
        if job is None:
            return None
        return await self.fire(job, int(self._clock.now()))

    async def runs(self, job_id: str, limit: int = 20) -> list[RunRecord]:
        return await self._store.job_runs(job_id, limit)

    async def listing(self, owner: str | None) -> str:
        """The ``!jobs`` text: one owner's jobs, or every job when owner is None."""
        lines = [self.summary(job, with_owner=owner is None) for job in await self.jobs(owner)]
        return replies.jobs_list(lines, everyone=owner is None)

    async def room_listing(self, room: str, asker: str) -> str:
        """``!jobs`` for a room's moderators: every job of the room with its owner, then
        the asker's own jobs elsewhere."""
        here = [self.summary(job, with_owner=True) for job in await self.jobs(room=room)]
        elsewhere = [self.summary(job) for job in await self.jobs(asker) if job.room != room]
        return replies.room_jobs_list(room, here, elsewhere)

    def summary(self, job: ScheduledJob, *, with_owner: bool = False) -> str:
        """One line about a job: id, when, where, what, and its next run."""
        return replies.job_line(
            job.id,
            when=describe_when(job),
            room=job.room,
            what="prompt" if job.prompt is not None else "message",
            next_run=_local_text(self.next_fire_time(job), job.timezone),
            paused=job.paused,
            owner=job.owner if with_owner else None,
            made_in=job.origin_room if job.origin_room not in ("", job.room) else None,
        )

    # -- config reconciliation -------------------------------------------------------

    async def reconcile(self, schedules: Sequence[ScheduleSettings]) -> None:
        """Make the store's config jobs match the config: add, change, remove by id."""
        wanted = self._config_jobs(schedules)
        stored = {job.id: job for job in await self.jobs() if job.source == "config"}
        now = float(int(self._clock.now()))
        for job in wanted:
            old = stored.pop(job.id, None) or await self.get(job.id)
            if old is not None and old.source == "config" and old.same_definition(job):
                continue
            if old is not None and old.source != "config":
                log.warning("schedule.id_taken_by_config", job=job.id, was=old.source)
            created = old.created_at if old is not None and old.source == "config" else now
            paused = old.paused if old is not None and old.source == "config" else False
            new = replace(job, created_at=created, active_since=now, paused=paused)
            await self._store.save_job(job_record(new))
            log.info("schedule.config_saved", job=job.id, changed=old is not None)
        for job_id in stored:
            self.timer.disarm(job_id)
            await self._store.delete_job(job_id)
            log.info("schedule.config_removed", job=job_id)

    def _config_jobs(self, schedules: Sequence[ScheduleSettings]) -> list[ScheduledJob]:
        return check_schedules(schedules, self.default_timezone)

    async def rearm(self) -> None:
        """Arm every stored job again and disarm what is gone: another replica changed
        them. Each fire time still runs once (the ledger), whoever's timer fires first."""
        jobs = await self.jobs()
        for job in jobs:
            self._arm(job)
        for gone in self.timer.armed() - {job.id for job in jobs}:
            self.timer.disarm(gone)

    async def interrupt_runs(self, alive: Sequence[str]) -> None:
        """Runs left 'running' by a replica that is gone are over (never delivered again)."""
        interrupted = await self._store.interrupt_running_runs(alive)
        if interrupted:
            log.warning("schedule.interrupted_runs", count=interrupted)

    async def reload(self, schedules: Sequence[ScheduleSettings]) -> None:
        """After a config reload: reconcile the config's jobs and re-arm every job."""
        await self.reconcile(schedules)
        for job in await self.jobs():
            self._arm(job)

    # -- running ---------------------------------------------------------------------

    async def run_due(self) -> dict[str, RunOutcome]:
        """Run every job whose fire time is due by the clock; what happened, by job id."""
        outcomes: dict[str, RunOutcome] = {}
        for job in await self.jobs():
            outcome = await self.run_due_job(job)
            if outcome is not None:
                outcomes[job.id] = outcome
        return outcomes

    async def run_due_job(self, job: ScheduledJob) -> RunOutcome | None:
        """The latest due fire time of one job, once; older missed ones follow the policy."""
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        async with lock:
            if job.paused:
                return None
            now = self._clock.now()
            last = await self._store.last_run(job.id)
            after = max(job.active_since, last.fire_time if last else 0.0)
            trigger = self.trigger(job)
            due = trigger.latest_between(after, now)
            if due is None:
                return None
            if now - due > self._grace_s:
                missed = len(trigger.fire_times(after, now))
                if job.misfire == "skip":
                    return await self._skip_missed(job, due, missed, now)
                log.info("schedule.catch_up", job=job.id, fire_time=due, missed=missed)
            return await self.fire(job, due)

    async def _skip_missed(
        self, job: ScheduledJob, due: int, missed: int, now: float
    ) -> RunOutcome:
        detail = f"missed {missed} fire time(s) while down; misfire policy is skip"
        await self._store.claim_run(job.id, due, status="skipped", detail=detail)
        log.warning("schedule.missed", job=job.id, fire_time=due, missed=missed, late_s=now - due)
        await self._audit(job, "skipped", detail)
        await self._retire_one_off(job)
        return "skipped"

    async def fire(self, job: ScheduledJob, fire_time: int) -> RunOutcome:
        """Claim the fire time in the ledger, then deliver; a claimed time never runs again."""
        fire_time = int(fire_time)
        if not await self._store.claim_run(job.id, fire_time):
            log.info("schedule.already_ran", job=job.id, fire_time=fire_time)
            return "duplicate"
        crash_point("schedule_claimed")
        outcome, detail = await self._deliver_once(job, fire_time)
        crash_point("schedule_delivered")
        await self._store.finish_run(job.id, fire_time, outcome, detail)
        await self._audit(job, outcome, detail)
        await self._retire_one_off(job)
        return outcome

    async def _retire_one_off(self, job: ScheduledJob) -> None:
        """A one-off reminder made in chat is gone once its time came (config jobs stay)."""
        if job.one_off and job.source != "config":
            self.timer.disarm(job.id)
            await self._store.delete_job(job.id)

    async def _deliver_once(self, job: ScheduledJob, fire_time: int) -> tuple[RunOutcome, str]:
        try:
            result = await self._deliver(job, fire_time)
        except TalkbotError as exc:
            log.warning("schedule.run_failed", job=job.id, error=type(exc).__name__)
            return "failed", type(exc).__name__
        except Exception as exc:
            log.exception("schedule.run_crashed", job=job.id)
            return "failed", type(exc).__name__
        if isinstance(result, Skipped):
            log.warning("schedule.skipped", job=job.id, room=job.room, reason=result.reason)
            return "skipped", result.reason
        log.info("schedule.ran", job=job.id, room=job.room, fire_time=fire_time)
        return "done", ""

    async def _audit(self, job: ScheduledJob, outcome: str, detail: str) -> None:
        await self._store.audit(
            actor=job.owner,
            room=job.room,
            action="schedule.run",
            outcome=outcome,
            detail=f"{job.id}: {detail}" if detail else job.id,
        )

    # -- the timer's side --------------------------------------------------------------

    def _arm(self, job: ScheduledJob) -> None:
        if not self._running:
            return
        next_fire = self.next_fire_time(job)
        if next_fire is None:
            self.timer.disarm(job.id)
        else:
            self.timer.arm(job.id, next_fire, self._on_timer)

    async def _on_timer(self, job_id: str) -> None:
        """APScheduler's job function: hand the work to a task this scheduler owns."""
        if self._running:
            self._spawn(self._wake(job_id))

    async def _wake(self, job_id: str) -> None:
        try:
            job = await self.get(job_id)
            if job is None:
                self.timer.disarm(job_id)
                return
            self._arm(job)
            await self.run_due_job(job)
            await self._prune()
        except Exception:
            log.exception("schedule.wake_failed", job=job_id)

    async def _prune(self) -> None:
        now = self._clock.now()
        if now - self._pruned_at < 24 * 3600:
            return
        self._pruned_at = now
        await self._store.prune_job_runs(LEDGER_RETENTION_S)


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


def _local_text(epoch: int | None, timezone: str) -> str | None:
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, zone_of(timezone))
    return f"{moment:%a %Y-%m-%d %H:%M} {moment.tzname()}"


# -- the deliver path ----------------------------------------------------------------


class MessagePoster(Protocol):
    """What a run posts through: the Talk client (or the console's transport)."""

    async def send_message(
        self, token: str, message: str, *, reference_id: str | None = None
    ) -> object: ...


# (room, requester, role, prompt, timezone) -> the answer to post
RunTurn = Callable[[str, str, Role, str, str], Awaitable[str]]
RoleOf = Callable[[str], Role]
# Learn what Nextcloud says of an actor (groups, language) before their role is read.
Learn = Callable[[str], Awaitable[None]]


async def _nothing_to_learn(_actor: str) -> None:
    return None


class JobDelivery:
    """``deliver`` for the scheduler: re-check creator and room, then post or run a turn."""

    def __init__(
        self,
        *,
        store: Store,
        poster: MessagePoster,
        role_of: RoleOf,
        learn: Learn = _nothing_to_learn,
        language_of: Callable[[str], str | None] = lambda _actor: None,
        quotas: Quotas | None = None,
    ) -> None:
        self._store = store
        self._poster = poster
        self._role_of = role_of
        self._quotas = quotas
        self._learn = learn
        self._language_of = language_of
        self._run_turn: RunTurn | None = None

    def use_turns(self, run_turn: RunTurn) -> None:
        """Wire the agent (built after the toolbox that holds the schedule tools)."""
        self._run_turn = run_turn

    async def __call__(self, job: ScheduledJob, fire_time: int) -> Skipped | None:
        refusal = await self.refusal(job)
        # A prompt job's turn speaks its creator's language (told to the model, too).
        with i18n.language(self._language_of(job.owner)):
            return await self._deliver(job, fire_time, refusal)

    async def _deliver(
        self, job: ScheduledJob, fire_time: int, refusal: str | None
    ) -> Skipped | None:
        if refusal is not None:
            return Skipped(refusal)
        if job.prompt is not None:
            if self._run_turn is None:
                return Skipped("agent turns are not available")
            if (over_quota := await self._over_quota(job, fire_time)) is not None:
                return over_quota
            text = await self._run_turn(
                job.room, job.owner, job.created_by_role, job.prompt, job.timezone
            )
        else:
            text = job.message or ""
        # Whoever made the job (config, admin, chat) and whatever the model answered: a job
        # never notifies the whole room (#13.8, I09).
        await self._poster.send_message(
            job.room,
            replies.defuse_mentions(text),
            reference_id=f"talkbot-job-{job.id}-{fire_time}",
        )
        return None

    async def _over_quota(self, job: ScheduledJob, fire_time: int) -> Skipped | None:
        """A prompt job whose owner (or room) used up today's tokens does not ask the
        model: the room is told, and the run is skipped. The config's jobs count as an
        admin's, under the name "config"."""
        if self._quotas is None:
            return None
        role = "admin" if job.source == "config" else self._role_of(job.owner)
        over = await self._quotas.check(job.owner, job.room, role)
        if over is None:
            return None
        notice = replies.job_over_quota(
            job.id, over.scope, over.limit, over.resets_at, now=self._quotas.now()
        )
        await self._poster.send_message(
            job.room, notice, reference_id=f"talkbot-job-{job.id}-{fire_time}"
        )
        return Skipped(f"the {over.scope}'s daily quota of {over.limit} tokens is used up")

    async def refusal(self, job: ScheduledJob) -> str | None:
        """Why this job may not run now (A16), or None."""
        room = await self._store.get_room(job.room)
        if room is not None and not room.joined:
            return "the bot is no longer in the room"
        if job.prompt is not None and job.room != job.origin_room and not job.may_prompt_elsewhere:
            return f"a prompt job runs only in the room it was made in ({job.origin_room or '?'})"
        if job.source == "config":
            return None
        await self._learn(job.owner)  # a role from Nextcloud groups, as current as a chat's
        role = self._role_of(job.owner)
        if not at_least(role, job.created_by_role) or not at_least(role, "user"):
            return f"the creator's role is now {role}, the job needs {job.created_by_role}"
        return None


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
