"""schedule_add / schedule_list / schedule_remove: own jobs in the own room for users, all
jobs and any known room for admins; bad expressions come back to the model naming the field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bot.clock import ManualClock
from bot.config import LimitsSettings, Role, ScheduleSettings
from bot.scheduler import ScheduledJob, Scheduler, Skipped
from bot.store import Store
from bot.tools import Toolbox, ToolContext, ToolResult
from bot.tools.schedule import make_schedule_tools
from bot.tools.talk import RoomDirectory
from tests.tools import context

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC).timestamp()  # Monday 09:00 in Berlin
LIMITS = LimitsSettings(jobs_per_person=3, jobs_per_room=4)
HERE = "hereroom1"
OTHER = "teamroom1"


async def no_delivery(_job: ScheduledJob, _fire_time: int) -> Skipped | None:
    return None


@dataclass
class Setup:
    toolbox: Toolbox
    scheduler: Scheduler
    clock: ManualClock

    async def call(
        self, name: str, args: dict[str, Any], context: ToolContext, *, confirmed: bool = False
    ) -> ToolResult:
        """``confirmed``: as the confirmation handler runs a call after the requester's yes."""
        validated = self.toolbox.validate(name, json.dumps(args))
        return await self.toolbox.execute(name, validated, context, confirmed=confirmed)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    clock = ManualClock(T0)
    store = Store.open(tmp_path / "talkbot.sqlite3", clock)
    await store.record_room(HERE, name="Here", one_to_one=False)
    await store.record_room(OTHER, name="Team", one_to_one=False)
    scheduler = Scheduler(
        store, clock, no_delivery, default_timezone="Europe/Berlin", limits=lambda: LIMITS
    )
    standup = ScheduleSettings.model_validate(
        {"id": "standup", "cron": "0 9 * * 1-5", "room": OTHER, "message": "Stand-up"}
    )
    await scheduler.start([standup])
    toolbox = Toolbox(make_schedule_tools(scheduler, RoomDirectory(store)))
    yield Setup(toolbox, scheduler, clock)
    await scheduler.stop()
    await store.close()


ctx = partial(context.ctx, room=HERE, now=T0, timezone="Europe/Berlin")


async def test_user_schedules_a_reminder_in_the_own_room(setup: Setup) -> None:
    result = await setup.call(
        "schedule_add", {"at": "2026-11-06T09:00", "message": "Send the report"}, ctx()
    )
    assert result.ok, result.text
    assert "next: Fri 2026-11-06 09:00 CET" in result.text
    [job] = await setup.scheduler.jobs("users/alice")
    assert (job.room, job.owner, job.created_by_role, job.source) == (
        HERE,
        "users/alice",
        "user",
        "chat",
    )
    assert job.timezone == "Europe/Berlin"  # the person's default


async def test_timezone_argument_overrides_the_default(setup: Setup) -> None:
    args = {"cron": "0 9 * * 1", "message": "Hi", "timezone": "America/New_York"}
    result = await setup.call("schedule_add", args, ctx())
    assert result.ok
    assert "Mon 2026-11-02 09:00 EST" in result.text


async def test_user_cannot_schedule_into_another_room(setup: Setup) -> None:
    args = {"every": "1h", "message": "spam", "room": OTHER}
    result = await setup.call("schedule_add", args, ctx(), confirmed=True)
    assert not result.ok
    assert "only use this room" in result.text
    assert await setup.scheduler.jobs("users/alice") == []


async def test_admin_schedules_into_any_known_room_but_not_unknown_ones(setup: Setup) -> None:
    known = await setup.call(
        "schedule_add",
        {"every": "1d", "message": "Hi team", "room": OTHER},
        ctx("admin", uid="root"),
        confirmed=True,
    )
    assert known.ok
    unknown = await setup.call(
        "schedule_add",
        {"every": "1d", "message": "Hi", "room": "elsewhere1"},
        ctx("admin", uid="root"),
        confirmed=True,
    )
    assert not unknown.ok
    assert "unknown room" in unknown.text
    assert [job.room for job in await setup.scheduler.jobs("users/root")] == [OTHER]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"cron": "0 9 * * 8", "message": "x"}, "cron: the day-of-week field"),
        ({"cron": "0 25 * * *", "message": "x"}, "cron: the hour field"),
        ({"every": "soon", "message": "x"}, "every: must be a number and a unit"),
        ({"at": "friday 9", "message": "x"}, "at: must be an ISO date-time"),
        ({"at": "2026-11-01T09:00", "message": "x"}, "at: this time is in the past"),
        ({"message": "x"}, "when: give exactly one of cron, every or at"),
        ({"every": "1h", "cron": "0 9 * * *", "message": "x"}, "when: give exactly one"),
        ({"every": "1h"}, "what: give exactly one of message or prompt"),
        ({"every": "1h", "message": "x", "prompt": "y"}, "what: give exactly one"),
        ({"every": "30s", "message": "x"}, "every: at least 60s"),
        ({"every": "1h", "message": "x", "timezone": "Mars/Base"}, "timezone: unknown"),
    ],
)
async def test_invalid_requests_tell_the_model_which_field(
    setup: Setup, args: dict[str, Any], words: str
) -> None:
    result = await setup.call("schedule_add", args, ctx())
    assert not result.ok
    assert words in result.text
    assert await setup.scheduler.jobs("users/alice") == []


@pytest.mark.parametrize(("uid", "role"), [("alice", "user"), ("root", "admin")])
async def test_i07_a_person_has_the_configured_job_limit_admins_too(
    setup: Setup, uid: str, role: Role
) -> None:
    for index in range(LIMITS.jobs_per_person):
        args = {"every": "1h", "prompt": f"digest #{index}"}
        result = await setup.call("schedule_add", args, ctx(role, uid=uid))
        assert result.ok, result.text
    result = await setup.call(
        "schedule_add", {"every": "1h", "message": "one more"}, ctx(role, uid=uid)
    )
    assert not result.ok
    assert "[limits] jobs_per_person = 3" in result.text
    assert "remove one first" in result.text
    assert len(await setup.scheduler.jobs(f"users/{uid}")) == LIMITS.jobs_per_person


async def test_i07_a_room_has_the_configured_job_limit_and_config_jobs_do_not_count(
    setup: Setup,
) -> None:
    for uid in ("alice", "bob"):
        for index in range(2):
            args = {"every": "1h", "message": f"{uid} #{index}"}
            assert (await setup.call("schedule_add", args, ctx(uid=uid))).ok
    full = await setup.call(
        "schedule_add", {"every": "1h", "message": "one more"}, ctx(uid="carol")
    )
    assert not full.ok
    assert f"room {HERE} already has 4 scheduled jobs" in full.text
    assert "[limits] jobs_per_room = 4" in full.text
    # The config's stand-up in the other room does not count: three of root's fit there.
    for index in range(3):
        args = {"every": "1h", "message": f"#{index}"}
        assert (await setup.call("schedule_add", args, ctx("admin", uid="root", room=OTHER))).ok, (
            index
        )


async def test_i05_a_chat_job_records_the_room_it_was_made_in(setup: Setup) -> None:
    assert (await setup.call("schedule_add", {"every": "1h", "prompt": "digest"}, ctx())).ok
    [job] = await setup.scheduler.jobs("users/alice")
    assert (job.room, job.origin_room) == (HERE, HERE)


async def test_scheduled_runs_cannot_schedule_more(setup: Setup) -> None:
    result = await setup.call(
        "schedule_add", {"every": "1h", "message": "again"}, ctx(unattended=True)
    )
    assert not result.ok
    assert await setup.scheduler.jobs("users/alice") == []


async def test_a_user_cannot_list_or_remove_another_users_job(setup: Setup) -> None:
    await setup.call("schedule_add", {"every": "1h", "message": "Alice's secret"}, ctx())
    [job] = await setup.scheduler.jobs("users/alice")
    listed = await setup.call("schedule_list", {}, ctx(uid="bob"))
    assert job.id not in listed.text
    assert "Alice's" not in listed.text
    removed = await setup.call("schedule_remove", {"id": job.id}, ctx(uid="bob"))
    assert not removed.ok
    assert "no job" in removed.text
    assert await setup.scheduler.get(job.id) is not None
    own = await setup.call("schedule_list", {}, ctx(uid="alice"))
    assert job.id in own.text
    assert "standup" not in own.text  # the config's job is not Alice's
    assert (await setup.call("schedule_remove", {"id": job.id}, ctx(uid="alice"))).ok
    assert await setup.scheduler.get(job.id) is None


async def test_admin_lists_and_removes_every_job_but_config_ones(setup: Setup) -> None:
    await setup.call("schedule_add", {"every": "1h", "message": "water"}, ctx())
    [job] = await setup.scheduler.jobs("users/alice")
    listed = await setup.call("schedule_list", {}, ctx("admin", uid="root"))
    assert job.id in listed.text
    assert "standup" in listed.text
    assert "by users/alice" in listed.text
    config = await setup.call("schedule_remove", {"id": "standup"}, ctx("admin", uid="root"))
    assert not config.ok
    assert "config file" in config.text
    assert (await setup.call("schedule_remove", {"id": job.id}, ctx("admin", uid="root"))).ok


async def test_guests_get_no_schedule_tools(setup: Setup) -> None:
    assert setup.toolbox.specs_for("guest") == []
    names = [spec["function"]["name"] for spec in setup.toolbox.specs_for("user")]
    assert names == ["schedule_add", "schedule_list", "schedule_remove"]
