"""When a job fires: cron, every and at expressions as fire times, in a job's timezone."""

# APScheduler 3 ships no type hints; its objects are typed Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.config import EVERY_PATTERN
from bot.errors import TalkbotError

TriggerKind = Literal["cron", "every", "at"]

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


class ScheduleError(TalkbotError):
    """A schedule expression is invalid; ``field`` names the key (cron, every, at, ...)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


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


def local_text(epoch: int | None, timezone: str) -> str | None:
    """A fire time as wall-clock time in ``timezone``, for people to read."""
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, zone_of(timezone))
    return f"{moment:%a %Y-%m-%d %H:%M} {moment.tzname()}"
