"""The Scheduler: jobs' lifecycle, the run ledger and catch-up policy, and arming the timer.

The store holds the job definitions and a ledger with one row per (job, fire time); a fire
time is entered there before anything is delivered, so it is delivered at most once, also
across a crash and a restart. APScheduler only wakes us up: each wake-up works out from the
ledger which fire time is due and applies the job's misfire policy, so a late or missed
wake-up never turns into a burst. What a run does (post a message, run an agent turn) is
the injected ``deliver`` callable; this module never imports the agent.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Literal

import structlog

from bot import replies
from bot.clock import Clock
from bot.config import LimitsSettings, ScheduleSettings
from bot.crashpoints import crash_point
from bot.errors import TalkbotError
from bot.scheduler.jobs import (
    Deliver,
    ScheduledJob,
    Skipped,
    check_limits,
    check_schedules,
    describe_when,
    job_from_record,
    job_record,
)
from bot.scheduler.timer import Timer
from bot.scheduler.triggers import JobTrigger, ScheduleError, build_trigger, local_text
from bot.store import RunRecord, Store

log = structlog.get_logger(__name__)

RunOutcome = Literal["done", "skipped", "failed", "duplicate"]

DEFAULT_GRACE_S = 120.0  # a fire time at most this late is on time, whatever the policy
LEDGER_RETENTION_S = 30 * 24 * 3600.0
STOP_DEADLINE_S = 10.0
_ID_ALPHABET = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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
        await self.timer.stop()
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
        check_limits(job, await self.jobs(job.owner), await self.jobs(room=job.room), limits)

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
            next_run=local_text(self.next_fire_time(job), job.timezone),
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
