"""APScheduler as the timer: one one-shot wake-up per job, on the injected clock's delay."""

# APScheduler 3 ships no type hints; its objects are typed Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from bot.clock import Clock

# The timer's APScheduler job defaults, explicit because its own (misfire_grace_time=1 s,
# coalesce) silently drop late wake-ups (R10). A wake-up is never dropped here; the ledger
# and the job's misfire policy decide what a late one runs.
TIMER_JOB_DEFAULTS: dict[str, Any] = {
    "misfire_grace_time": None,
    "coalesce": True,
    "max_instances": 1,
}


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

    def start(self) -> None:
        if not self.aps.running:
            self.aps.start()

    async def stop(self) -> None:
        """Stop waking jobs. A wake-up APScheduler has just handed to the loop is let run
        first (the scheduler's own stop makes it a no-op): shutting down at once cancels
        it before its first step, and APScheduler logs that as an error with a traceback."""
        if not self.aps.running:
            return
        self.aps.pause()  # no wake-up is handed out from here on
        await asyncio.sleep(0)  # those handed out already run their one step
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
