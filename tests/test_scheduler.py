"""The scheduler: triggers, crontab numbering, DST, the run ledger and the misfire policy.

R10 (downtime across fire times), R11 (crash mid-run), R13 (DST), A16 (creator and room
re-checked at fire time). Fire times are driven by moving a ManualClock and calling
``run_due`` / ``fire``; nothing here waits for a schedule.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from bot.access import Access
from bot.clock import ManualClock
from bot.config import AccessSettings, LimitsSettings, ScheduleSettings
from bot.errors import ConfigError
from bot.scheduler import (
    TIMER_JOB_DEFAULTS,
    JobDelivery,
    RunTurn,
    ScheduledJob,
    ScheduleError,
    Scheduler,
    Skipped,
    Timer,
    build_trigger,
    check_schedules,
    crontab_weekdays,
)
from bot.store import Store

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC).timestamp()  # a Monday
HOUR = 3600


@dataclass
class Deliveries:
    """The injected ``deliver``: records each (job id, fire time) it is asked to run."""

    calls: list[tuple[str, int]] = field(default_factory=list)
    skip_reason: str | None = None

    async def __call__(self, job: ScheduledJob, fire_time: int) -> Skipped | None:
        self.calls.append((job.id, fire_time))
        return Skipped(self.skip_reason) if self.skip_reason else None


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Store]:
    opened = Store.open(tmp_path / "talkbot.sqlite3", clock)
    yield opened
    await opened.close()


def hourly(misfire: str = "once", job_id: str = "standup") -> ScheduleSettings:
    return ScheduleSettings.model_validate(
        {"id": job_id, "every": "1h", "room": "room1234", "message": "Stand-up", "misfire": misfire}
    )


def local(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, BERLIN)


async def started(
    store: Store, clock: ManualClock, deliveries: Deliveries, *schedules: ScheduleSettings
) -> Scheduler:
    scheduler = Scheduler(store, clock, deliveries, default_timezone="Europe/Berlin")
    await scheduler.start(schedules)
    await scheduler.idle()
    return scheduler


# -- R10: the timer's APScheduler defaults ----------------------------------------------


async def test_r10_timer_job_defaults_are_explicit(store: Store, clock: ManualClock) -> None:
    """APScheduler's own defaults (misfire_grace_time=1, coalesce=True) drop late wake-ups:
    a wake-up the timer arms carries the explicit ones (read through APScheduler's Job)."""
    scheduler = Scheduler(store, clock, Deliveries())

    async def wake(_job_id: str) -> None:
        return None

    scheduler.timer.start()
    try:
        scheduler.timer.arm("nightly", clock.now() + 3600, wake)
        job = scheduler.timer.aps.get_job("nightly")
        armed = {
            "misfire_grace_time": job.misfire_grace_time,
            "coalesce": job.coalesce,
            "max_instances": job.max_instances,
        }
    finally:
        await scheduler.timer.stop()
    assert armed == {"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
    assert armed == TIMER_JOB_DEFAULTS


async def test_r08_a_job_due_as_the_timer_stops_is_left_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job falls due in the very loop tick in which the daemon stops its timer (seen in
    a rolling restart): APScheduler must not hand out a wake-up it then cancels before its
    first step, which it logs as "Error running job" with a CancelledError traceback. The
    wake-up is simply not handed out; the next start catches the fire time up (R10)."""
    clock = ManualClock()
    timer = Timer(clock)
    woke: list[str] = []

    async def wake(job_id: str) -> None:
        woke.append(job_id)

    timer.start()
    timer.arm("tick", clock.now() + 3600, wake)
    for _ in range(3):
        await asyncio.sleep(0)  # APScheduler has looked and set its own timer
    job = timer.aps.get_job("tick")
    job._modify(next_run_time=datetime.now(UTC))  # due now, APScheduler not told
    timer.aps._lookup_jobstore("default").update_job(job)
    with caplog.at_level(logging.ERROR, logger="apscheduler"):
        stopping = asyncio.create_task(timer.stop())
        await asyncio.sleep(0)  # the stop has begun
        timer.aps._process_jobs()  # APScheduler's own timer firing in that same tick
        await stopping
        for _ in range(3):
            await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("apscheduler")] == []
    assert woke == []
    assert not timer.aps.running


# -- triggers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crontab", "expected"),
    [
        ("*", "*"),
        ("1", "mon"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0,6", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("0-3", "sun,mon,tue,wed"),
        ("5-7", "sun,fri,sat"),
        ("1/2", "sun,mon,wed,fri"),
        ("1-5/2", "mon,wed,fri"),
        ("MON-FRI", "mon,tue,wed,thu,fri"),
        ("sat-sun", "sun,sat"),
    ],
)
def test_crontab_day_of_week_numbering_is_translated(crontab: str, expected: str) -> None:
    assert crontab_weekdays(crontab) == expected


@pytest.mark.parametrize(
    ("expr", "weekday"),
    [("0 9 * * 0", 6), ("0 9 * * 7", 6), ("0 9 * * 1", 0), ("0 9 * * 6", 5), ("0 9 * * 5", 4)],
)
def test_crontab_day_numbers_fire_on_the_crontab_day(expr: str, weekday: int) -> None:
    trigger = build_trigger("cron", expr, "Europe/Berlin")
    for fire_time in trigger.fire_times(T0, T0 + 21 * 24 * HOUR):
        assert local(fire_time).weekday() == weekday
        assert local(fire_time).hour == 9


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Asia/Tokyo"])
def test_monday_nine_fires_on_monday_0900_in_the_jobs_timezone(zone: str) -> None:
    trigger = build_trigger("cron", "0 9 * * 1", zone)
    wednesday = datetime(2026, 11, 4, 12, 0, tzinfo=UTC).timestamp()
    fire_times = trigger.fire_times(wednesday, wednesday + 15 * 24 * HOUR)
    moments = [datetime.fromtimestamp(t, ZoneInfo(zone)) for t in fire_times]
    assert [(m.strftime("%A %H:%M"), m.day) for m in moments] == [
        ("Monday 09:00", 9),
        ("Monday 09:00", 16),
    ]


def test_weekdays_job_skips_the_weekend() -> None:
    trigger = build_trigger("cron", "0 9 * * 1-5", "Europe/Berlin")
    days = [local(t).strftime("%a") for t in trigger.fire_times(T0, T0 + 7 * 24 * HOUR)]
    assert days == ["Tue", "Wed", "Thu", "Fri", "Mon"]


def test_day_of_month_and_day_of_week_fire_on_either_like_crontab() -> None:
    trigger = build_trigger("cron", "0 9 13 * 5", "Europe/Berlin")
    november = datetime(2026, 11, 1, tzinfo=BERLIN).timestamp()
    days = [local(t).day for t in trigger.fire_times(november, november + 30 * 24 * HOUR)]
    assert days == [6, 13, 20, 27]  # Fridays; the 13th is one too
    trigger = build_trigger("cron", "0 9 12 * 5", "Europe/Berlin")
    days = [local(t).day for t in trigger.fire_times(november, november + 30 * 24 * HOUR)]
    assert days == [6, 12, 13, 20, 27]


def test_r13_spring_forward_day_fires_a_0230_job_once() -> None:
    trigger = build_trigger("cron", "30 2 * * *", "Europe/Berlin")
    start = datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN).timestamp()
    fire_times = trigger.fire_times(start, start + 2 * 24 * HOUR)
    on_the_day = [t for t in fire_times if local(t).date().isoformat() == "2026-03-29"]
    assert len(on_the_day) == 1
    # 02:30 does not exist that night: it runs right after the jump, at 03:30 CEST.
    assert local(on_the_day[0]).strftime("%H:%M %Z") == "03:30 CEST"


def test_r13_fall_back_day_fires_a_0230_job_once() -> None:
    trigger = build_trigger("cron", "30 2 * * *", "Europe/Berlin")
    start = datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN).timestamp()
    fire_times = trigger.fire_times(start, start + 2 * 24 * HOUR)
    on_the_day = [t for t in fire_times if local(t).date().isoformat() == "2026-10-25"]
    assert [local(t).strftime("%H:%M %Z") for t in on_the_day] == ["02:30 CEST"]


def test_r13_hourly_job_still_runs_every_real_hour_when_the_clock_falls_back() -> None:
    trigger = build_trigger("cron", "0 * * * *", "Europe/Berlin")
    start = datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN).timestamp()
    fire_times = trigger.fire_times(start, start + 3 * HOUR)
    assert [t - fire_times[0] for t in fire_times] == [0, HOUR, 2 * HOUR]


def test_r13_every_counts_real_time_across_dst() -> None:
    anchor = datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN).timestamp()
    trigger = build_trigger("every", "1d", "Europe/Berlin", anchor=anchor)
    first, second = trigger.fire_times(anchor, anchor + 2 * 24 * HOUR)
    assert second - first == 24 * HOUR


def test_at_is_read_in_the_jobs_timezone() -> None:
    trigger = build_trigger("at", "2026-12-24T09:00", "Europe/Berlin")
    fire_time = trigger.next_after(T0)
    assert fire_time is not None
    assert local(fire_time).strftime("%Y-%m-%d %H:%M %Z") == "2026-12-24 09:00 CET"
    assert trigger.next_after(fire_time) is None


@pytest.mark.parametrize(
    ("kind", "expr", "field", "words"),
    [
        ("cron", "61 * * * *", "cron", "minute"),
        ("cron", "* 24 * * *", "cron", "hour"),
        ("cron", "* * 32 * *", "cron", "day-of-month"),
        ("cron", "* * * 13 *", "cron", "month"),
        ("cron", "* * * * 8", "cron", "day-of-week"),
        ("cron", "* * * * 5-2", "cron", "day-of-week"),
        ("cron", "0 9 * *", "cron", "five fields"),
        ("every", "5 minutes", "every", "like 90s"),
        ("every", "0s", "every", "like 90s"),
        ("at", "next friday", "at", "ISO date-time"),
    ],
)
def test_invalid_expressions_name_the_field(kind: str, expr: str, field: str, words: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        build_trigger(kind, expr, "UTC")
    assert caught.value.field == field
    assert words in str(caught.value)


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ScheduleError) as caught:
        build_trigger("cron", "0 9 * * *", "Mars/Olympus")
    assert caught.value.field == "timezone"


def test_bad_config_schedule_names_its_config_key() -> None:
    bad = ScheduleSettings.model_validate(
        {"id": "x", "cron": "0 9 * * 9", "room": "room1234", "message": "m"}
    )
    with pytest.raises(ConfigError) as caught:
        check_schedules([hourly(), bad], "UTC")
    assert caught.value.problems[0][0] == "schedules[1].cron"


# -- running ---------------------------------------------------------------------------


async def test_every_job_fires_once_per_fire_time(store: Store, clock: ManualClock) -> None:
    deliveries = Deliveries()
    scheduler = await started(store, clock, deliveries, hourly())
    assert deliveries.calls == []
    for _ in range(3):
        clock.advance(HOUR)
        assert await scheduler.run_due() == {"standup": "done"}
        assert await scheduler.run_due() == {}  # the same fire time never runs twice
    assert [t for _, t in deliveries.calls] == [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]
    await scheduler.stop()


async def test_fire_twice_for_one_fire_time_delivers_once(store: Store, clock: ManualClock) -> None:
    deliveries = Deliveries()
    scheduler = await started(store, clock, deliveries, hourly())
    job = await scheduler.get("standup")
    assert job is not None
    assert await scheduler.fire(job, int(T0 + HOUR)) == "done"
    assert await scheduler.fire(job, int(T0 + HOUR)) == "duplicate"
    assert len(deliveries.calls) == 1
    await scheduler.stop()


async def restart(
    tmp_path: Path,
    store: Store,
    clock: ManualClock,
    deliveries: Deliveries,
    *schedules: ScheduleSettings,
) -> tuple[Store, Scheduler]:
    await store.close()
    reopened = Store.open(tmp_path / "talkbot.sqlite3", clock)
    return reopened, await started(reopened, clock, deliveries, *schedules)


async def test_r10_downtime_across_three_fire_times_catches_up_once(
    tmp_path: Path, store: Store, clock: ManualClock
) -> None:
    first = await started(store, clock, Deliveries(), hourly("once"))
    await first.stop()
    clock.advance(3 * HOUR + 20 * 60)  # down across T0+1h, +2h, +3h
    deliveries = Deliveries()
    with capture_logs() as logs:
        store, second = await restart(tmp_path, store, clock, deliveries, hourly("once"))
    assert deliveries.calls == [("standup", T0 + 3 * HOUR)]  # one catch-up, the latest
    assert any(e["event"] == "schedule.catch_up" and e["missed"] == 3 for e in logs)
    clock.advance(40 * 60)
    assert await second.run_due() == {"standup": "done"}  # then back on schedule
    assert deliveries.calls[-1] == ("standup", T0 + 4 * HOUR)
    await second.stop()
    await store.close()


async def test_r10_downtime_with_skip_policy_delivers_nothing_and_logs_it(
    tmp_path: Path, store: Store, clock: ManualClock
) -> None:
    first = await started(store, clock, Deliveries(), hourly("skip"))
    await first.stop()
    clock.advance(3 * HOUR + 20 * 60)
    deliveries = Deliveries()
    with capture_logs() as logs:
        store, second = await restart(tmp_path, store, clock, deliveries, hourly("skip"))
    assert deliveries.calls == []
    assert any(e["event"] == "schedule.missed" and e["missed"] == 3 for e in logs)
    runs = await second.runs("standup")
    assert [(r.fire_time, r.status) for r in runs] == [(T0 + 3 * HOUR, "skipped")]
    clock.advance(40 * 60)
    assert await second.run_due() == {"standup": "done"}
    await second.stop()
    await store.close()


async def test_r10_fire_time_just_missed_by_a_restart_runs_even_with_skip(
    tmp_path: Path, store: Store, clock: ManualClock
) -> None:
    first = await started(store, clock, Deliveries(), hourly("skip"))
    await first.stop()
    clock.advance(HOUR + 30)  # restarted 30 s after the fire time: inside the grace window
    deliveries = Deliveries()
    store, second = await restart(tmp_path, store, clock, deliveries, hourly("skip"))
    assert deliveries.calls == [("standup", T0 + HOUR)]
    await second.stop()
    await store.close()


async def test_r11_crash_mid_run_never_delivers_that_fire_time_again(
    tmp_path: Path, store: Store, clock: ManualClock
) -> None:
    entered = asyncio.Event()

    async def hangs(_job: ScheduledJob, _fire_time: int) -> Skipped | None:
        entered.set()
        await asyncio.Event().wait()
        return None

    first = Scheduler(store, clock, hangs)
    await first.start([hourly()])
    clock.advance(HOUR)
    run = asyncio.create_task(first.run_due())
    await entered.wait()
    run.cancel()  # the process dies while the message is being sent
    with pytest.raises(asyncio.CancelledError):
        await run
    await first.timer.stop()
    deliveries = Deliveries()
    store, second = await restart(tmp_path, store, clock, deliveries, hourly())
    assert deliveries.calls == []
    job = await second.get("standup")
    assert job is not None
    assert await second.fire(job, int(T0 + HOUR)) == "duplicate"
    assert [(r.fire_time, r.status) for r in await second.runs("standup")] == [
        (T0 + HOUR, "interrupted")
    ]
    clock.advance(HOUR)
    assert await second.run_due() == {"standup": "done"}
    assert deliveries.calls == [("standup", T0 + 2 * HOUR)]
    await second.stop()
    await store.close()


SIGKILL_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from bot.clock import ManualClock
    from bot.config import ScheduleSettings
    from bot.scheduler import Scheduler
    from bot.store import Store

    async def main():
        clock = ManualClock(float(sys.argv[2]))
        store = Store.open(Path(sys.argv[1]), clock)

        async def killed(job, fire_time):
            os.kill(os.getpid(), signal.SIGKILL)

        schedule = ScheduleSettings.model_validate(
            {"id": "standup", "every": "1h", "room": "room1234", "message": "Stand-up"}
        )
        scheduler = Scheduler(store, clock, killed)
        await scheduler.reconcile([schedule])
        clock.advance(3600)
        await scheduler.run_due()

    asyncio.run(main())
    """
)


async def test_r11_sigkill_during_a_run_then_restart_does_not_deliver_twice(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "killed.sqlite3"
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SIGKILL_CHILD, str(path), str(T0)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -9, child.stderr.decode()
    clock.advance(HOUR)  # the restarted daemon's clock is where the child died
    store = Store.open(path, clock)
    deliveries = Deliveries()
    scheduler = await started(store, clock, deliveries, hourly())
    assert deliveries.calls == []
    assert [r.status for r in await scheduler.runs("standup")] == ["interrupted"]
    await scheduler.stop()
    await store.close()


# -- definitions -----------------------------------------------------------------------


async def test_config_jobs_are_reconciled_by_id(
    tmp_path: Path, store: Store, clock: ManualClock
) -> None:
    other = ScheduleSettings.model_validate(
        {"id": "friday", "cron": "0 16 * * 5", "room": "room1234", "message": "Weekend!"}
    )
    first = await started(store, clock, Deliveries(), hourly(), other)
    assert [job.id for job in await first.jobs()] == ["friday", "standup"]
    await first.pause("friday")
    await first.stop()
    changed = ScheduleSettings.model_validate(
        {"id": "friday", "cron": "0 15 * * 5", "room": "room1234", "message": "Weekend!"}
    )
    clock.advance(60)
    store, second = await restart(tmp_path, store, clock, Deliveries(), changed)
    jobs = await second.jobs()
    assert [(job.id, job.expr, job.paused) for job in jobs] == [("friday", "0 15 * * 5", True)]
    assert jobs[0].created_at == T0
    assert jobs[0].active_since == T0 + 60
    await second.stop()
    await store.close()


async def test_config_cannot_take_over_a_chat_jobs_definition_silently(
    store: Store, clock: ManualClock
) -> None:
    scheduler = await started(store, clock, Deliveries())
    await scheduler.add(chat_job("standup"))
    with capture_logs() as logs:
        await scheduler.reconcile([hourly()])
    job = await scheduler.get("standup")
    assert job is not None
    assert job.source == "config"
    assert any(e["event"] == "schedule.id_taken_by_config" for e in logs)
    await scheduler.stop()


def chat_job(job_id: str = "jabc123", **changes: object) -> ScheduledJob:
    values: dict[str, object] = {
        "id": job_id,
        "room": "room1234",
        "kind": "every",
        "expr": "1h",
        "timezone": "Europe/Berlin",
        "message": "Drink water",
        "owner": "users/alice",
        "created_by_role": "user",
        "source": "chat",
        "origin_room": "room1234",
    }
    values.update(changes)
    return ScheduledJob(**values)  # type: ignore[arg-type]  # test data by keyword


async def test_paused_job_does_not_fire_and_resume_does_not_catch_up(
    store: Store, clock: ManualClock
) -> None:
    deliveries = Deliveries()
    scheduler = await started(store, clock, deliveries)
    await scheduler.add(chat_job())
    assert await scheduler.pause("jabc123")
    clock.advance(3 * HOUR)
    assert await scheduler.run_due() == {}
    assert await scheduler.resume("jabc123")
    assert await scheduler.run_due() == {}
    clock.advance(HOUR)
    assert await scheduler.run_due() == {"jabc123": "done"}
    assert deliveries.calls == [("jabc123", T0 + 4 * HOUR)]
    await scheduler.stop()


async def test_one_off_chat_job_is_gone_after_it_ran(store: Store, clock: ManualClock) -> None:
    deliveries = Deliveries()
    scheduler = await started(store, clock, deliveries)
    await scheduler.add(chat_job(kind="at", expr="2026-11-02T10:00"))  # 09:00 UTC
    clock.advance(HOUR)
    assert await scheduler.run_due() == {"jabc123": "done"}
    assert await scheduler.get("jabc123") is None
    clock.advance(HOUR)
    assert await scheduler.run_due() == {}
    assert len(deliveries.calls) == 1
    await scheduler.stop()


async def test_a_time_in_the_past_is_refused(store: Store, clock: ManualClock) -> None:
    scheduler = await started(store, clock, Deliveries())
    with pytest.raises(ScheduleError) as caught:
        await scheduler.add(chat_job(kind="at", expr="2026-11-01T10:00"))
    assert caught.value.field == "at"
    assert await scheduler.jobs() == []
    await scheduler.stop()


async def test_run_now_and_remove(store: Store, clock: ManualClock) -> None:
    deliveries = Deliveries()
    scheduler = await started(store, clock, deliveries)
    await scheduler.add(chat_job())
    assert "jabc123" in scheduler.timer.armed()
    assert await scheduler.run_now("jabc123") == "done"
    assert await scheduler.remove("jabc123")
    assert "jabc123" not in scheduler.timer.armed()
    clock.advance(HOUR)
    assert await scheduler.run_due() == {}
    assert deliveries.calls == [("jabc123", T0)]
    await scheduler.stop()


async def test_listing_shows_the_next_run_in_the_jobs_timezone(
    store: Store, clock: ManualClock
) -> None:
    scheduler = await started(store, clock, Deliveries())
    await scheduler.add(chat_job(kind="cron", expr="0 9 * * 1"))
    text = await scheduler.listing("users/alice")
    assert "`jabc123`" in text
    assert "next: Mon 2026-11-09 09:00 CET" in text
    assert await scheduler.listing("users/bob") == "You have no scheduled jobs."
    await scheduler.stop()


async def test_the_timer_wakes_the_scheduler_at_the_fire_time() -> None:
    # The only test that lets APScheduler's timer run: the fire time is 0.1 s away.
    clock = ManualClock(T0 + 0.9)
    ran = asyncio.Event()

    async def deliver(_job: ScheduledJob, _fire_time: int) -> Skipped | None:
        ran.set()
        return None

    store = Store.open(Path(":memory:"), clock)
    scheduler = Scheduler(store, clock, deliver)
    await scheduler.start()
    await scheduler.add(chat_job(kind="at", expr="2026-11-02T09:00:01"))  # T0 + 1 s
    clock.advance(0.2)
    async with asyncio.timeout(5):
        await ran.wait()
    await scheduler.idle()
    assert await scheduler.get("jabc123") is None  # the one-off ran and is done
    await scheduler.stop()
    await store.close()


# -- A16: the deliver path re-checks the creator and the room ---------------------------


class Posted:
    """A poster that records what would be sent to Talk."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_message(
        self, token: str, message: str, *, reference_id: str | None = None
    ) -> object:
        self.sent.append((token, message))
        return [reference_id]


async def no_turn(_room: str, _who: str, _role: object, _prompt: str, _tz: str) -> str:
    raise AssertionError("no prompt job runs a turn in this test")


async def delivery_for(
    store: Store, access: Access, run_turn: RunTurn = no_turn
) -> tuple[JobDelivery, Posted]:
    posted = Posted()
    delivery = JobDelivery(store=store, poster=posted, role_of=access.role_of, run_turn=run_turn)
    return delivery, posted


async def test_a16_job_of_a_creator_who_lost_the_role_is_skipped_and_logged(
    store: Store, clock: ManualClock
) -> None:
    access = Access(AccessSettings(admins=("root",)))
    delivery, posted = await delivery_for(store, access)
    scheduler = Scheduler(store, clock, delivery)
    await scheduler.start()
    job = await scheduler.add(chat_job(owner="users/bob", created_by_role="admin"))
    access.set_override("bob", "admin")
    assert await scheduler.fire(job, int(T0)) == "done"
    access.set_override("bob", "user")
    with capture_logs() as logs:
        assert await scheduler.fire(job, int(T0 + HOUR)) == "skipped"
    assert posted.sent == [("room1234", "Drink water")]
    skipped = [e for e in logs if e["event"] == "schedule.skipped"]
    assert skipped
    assert "role is now user" in skipped[0]["reason"]
    audit = await store.recent_audit()
    assert [(a.action, a.outcome) for a in audit][-1] == ("schedule.run", "skipped")
    await scheduler.stop()


async def test_a16_job_in_a_room_the_bot_left_is_skipped(store: Store, clock: ManualClock) -> None:
    access = Access(AccessSettings())
    delivery, posted = await delivery_for(store, access)
    scheduler = Scheduler(store, clock, delivery)
    await scheduler.start([hourly()])
    await store.record_room("room1234", name="Team", one_to_one=False, joined=False)
    job = await scheduler.get("standup")
    assert job is not None
    assert await scheduler.fire(job, int(T0 + HOUR)) == "skipped"
    assert posted.sent == []
    await scheduler.stop()


async def test_a16_config_jobs_do_not_depend_on_a_persons_role(
    store: Store, clock: ManualClock
) -> None:
    access = Access(AccessSettings(users=("nobody-else",)))
    delivery, posted = await delivery_for(store, access)
    scheduler = Scheduler(store, clock, delivery)
    await scheduler.start([hourly()])
    clock.advance(HOUR)
    assert await scheduler.run_due() == {"standup": "done"}
    assert posted.sent == [("room1234", "Stand-up")]
    await scheduler.stop()


async def test_chat_made_messages_cannot_notify_the_whole_room(
    store: Store, clock: ManualClock
) -> None:
    access = Access(AccessSettings())
    delivery, posted = await delivery_for(store, access)
    scheduler = Scheduler(store, clock, delivery)
    await scheduler.start()
    job = await scheduler.add(chat_job(message="@all wake up"))
    assert await scheduler.fire(job, int(T0)) == "done"
    assert posted.sent[0][1] != "@all wake up"
    assert posted.sent[0][1].endswith("all wake up")
    await scheduler.stop()


@pytest.mark.parametrize(
    "source",
    [{"source": "config", "owner": "config", "created_by_role": "admin"}, {"source": "admin"}],
)
async def test_i09_config_and_admin_jobs_cannot_notify_the_whole_room(
    store: Store, clock: ManualClock, source: dict[str, str]
) -> None:
    access = Access(AccessSettings(admins=("alice",)))
    delivery, posted = await delivery_for(store, access)
    job = chat_job(message='@all wake up, @"here" too', **source)
    assert await delivery(job, int(T0)) is None
    [(_room, text)] = posted.sent
    assert "@all" not in text
    assert '@"here"' not in text
    assert text.replace("\u200b", "") == '@all wake up, @"here" too'


async def test_i05_a_users_prompt_job_outside_the_room_it_was_made_in_is_skipped(
    store: Store, clock: ManualClock
) -> None:
    access = Access(AccessSettings(admins=("root",)))
    turns: list[str] = []

    async def run_turn(room: str, _who: str, _role: object, prompt: str, _tz: str) -> str:
        turns.append(room)
        return f"answer to {prompt}"

    delivery, posted = await delivery_for(store, access, run_turn)
    moved = chat_job(message=None, prompt="digest", origin_room="elsewhere1")
    refusal = await delivery.refusal(moved)
    assert refusal is not None
    assert "room it was made in (elsewhere1)" in refusal
    assert await delivery(moved, int(T0)) == Skipped(refusal)
    # Fixed messages read nothing; an admin's cross-room prompt job was confirmed.
    assert await delivery.refusal(chat_job(origin_room="elsewhere1")) is None
    admins = chat_job(
        message=None,
        prompt="digest",
        origin_room="elsewhere1",
        owner="users/root",
        created_by_role="admin",
    )
    assert await delivery(admins, int(T0)) is None
    assert turns == ["room1234"]
    assert posted.sent == [("room1234", "answer to digest")]


async def test_i07_the_scheduler_counts_people_and_rooms_but_not_config_jobs(
    store: Store, clock: ManualClock
) -> None:
    limits = LimitsSettings(jobs_per_person=2, jobs_per_room=3)
    scheduler = Scheduler(store, clock, Deliveries(), limits=lambda: limits)
    await scheduler.start([hourly(), hourly(job_id="lunch")])  # two config jobs in room1234
    await scheduler.add(chat_job("a1"))
    await scheduler.add(chat_job("a2"))
    with pytest.raises(ScheduleError, match=r"\[limits\] jobs_per_person = 2"):
        await scheduler.add(chat_job("a3"))
    await scheduler.add(chat_job("a2", message="changed"))  # replacing one is no new job
    await scheduler.add(chat_job("b1", owner="users/bob"))
    with pytest.raises(ScheduleError, match=r"room room1234 already has 3 .*jobs_per_room = 3"):
        await scheduler.add(chat_job("b2", owner="users/bob"))
    assert len(await scheduler.jobs(room="room1234")) == 5  # with the config's two
    await scheduler.stop()
