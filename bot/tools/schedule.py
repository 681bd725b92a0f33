"""``schedule_add`` / ``schedule_list`` / ``schedule_remove``: reminders and recurring messages.

Users see and change only their own jobs, in their current room; admins see all jobs and
may schedule into any room the bot knows. Each job records the room it was made in (a user's
prompt job runs only there) and counts against ``[limits] jobs_per_person`` and
``jobs_per_room``, which the scheduler enforces. Jobs made here persist and survive restarts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot import i18n
from bot.errors import ToolError
from bot.scheduler import (
    ScheduledJob,
    ScheduleError,
    Scheduler,
    TriggerKind,
    every_seconds,
)
from bot.tools import Tool, ToolContext, roles_from
from bot.tools.talk import RoomDirectory, check_room

MIN_USER_EVERY_S = 60
MAX_TEXT_CHARS = 4000


class ScheduleAddArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    cron: str | None = Field(
        default=None,
        max_length=120,
        description=(
            "Recurring, five crontab fields 'minute hour day-of-month month day-of-week' "
            "(day of week 0 or 7 = Sunday, 1 = Monday), e.g. '0 9 * * 1-5' for weekdays at 9:00."
        ),
    )
    every: str | None = Field(
        default=None, max_length=16, description="Recurring interval like '30m', '2h' or '1d'."
    )
    at: str | None = Field(
        default=None,
        max_length=40,
        description="Once, at an ISO date-time like '2026-12-24T09:00' in the timezone.",
    )
    message: str | None = Field(
        default=None, max_length=MAX_TEXT_CHARS, description="Fixed text to post then."
    )
    prompt: str | None = Field(
        default=None,
        max_length=MAX_TEXT_CHARS,
        description="Instead of a message: a request you will answer then, posting the answer.",
    )
    timezone: str = Field(
        default="", max_length=64, description="IANA timezone; empty for the person's default."
    )
    room: str = Field(
        default="", max_length=64, description="Room token; empty for the current room."
    )


class ScheduleListArgs(BaseModel):
    model_config = ConfigDict(frozen=True)


class ScheduleRemoveArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1, max_length=64, description="The job id from schedule_list.")


def _when(args: ScheduleAddArgs) -> tuple[TriggerKind, str]:
    options: tuple[tuple[TriggerKind, str | None], ...] = (
        ("cron", args.cron),
        ("every", args.every),
        ("at", args.at),
    )
    given = [(kind, value.strip()) for kind, value in options if value and value.strip()]
    if len(given) != 1:
        raise ToolError("when: give exactly one of cron, every or at")
    return given[0]


def _elsewhere(args: ScheduleAddArgs, ctx: ToolContext) -> bool:
    """Into another room: confirmed like nc_talk_send (#13.1)."""
    return (args.room.strip() or ctx.room) != ctx.room


def _sends_out(args: ScheduleAddArgs, ctx: ToolContext) -> bool:
    """Egress: a job elsewhere, or a prompt job (its later turn may read and post anything)."""
    return _elsewhere(args, ctx) or bool((args.prompt or "").strip())


def _what(args: ScheduleAddArgs) -> tuple[str | None, str | None]:
    message = (args.message or "").strip() or None
    prompt = (args.prompt or "").strip() or None
    if (message is None) == (prompt is None):
        raise ToolError("what: give exactly one of message or prompt")
    return message, prompt


class ScheduleTools:
    """The three tools over one scheduler and the room directory."""

    def __init__(self, scheduler: Scheduler, rooms: RoomDirectory) -> None:
        self._scheduler = scheduler
        self._rooms = rooms

    async def add_job(self, args: ScheduleAddArgs, ctx: ToolContext) -> str:
        if ctx.unattended:
            raise ToolError("not available in scheduled runs")
        room = await check_room(args.room.strip() or ctx.room, ctx, self._rooms)
        kind, expr = _when(args)
        message, prompt = _what(args)
        await self._check_user_limits(kind, expr, ctx)
        job = ScheduledJob(
            id=await self._scheduler.new_id(),
            room=room,
            kind=kind,
            expr=expr,
            timezone=args.timezone.strip() or ctx.timezone,
            message=message,
            prompt=prompt,
            owner=ctx.requester,
            created_by_role=ctx.role,
            source="chat",
            origin_room=ctx.room,
        )
        try:
            job = await self._scheduler.add(job)
        except ScheduleError as exc:
            raise ToolError(str(exc)) from None
        with i18n.language(i18n.DEFAULT):  # a tool result: the model reads English
            line = self._scheduler.summary(job)
        return f"scheduled {line.removeprefix('- ')}"

    async def _room_allowed(self, args: ScheduleAddArgs, ctx: ToolContext) -> None:
        """A user's other room is refused before anyone is asked to confirm it."""
        await check_room(args.room.strip() or ctx.room, ctx, self._rooms)

    async def _check_user_limits(self, kind: TriggerKind, expr: str, ctx: ToolContext) -> None:
        """Non-admins: at least a minute between runs. How many jobs anyone may have is
        ``[limits]``, checked by the scheduler for every source."""
        if ctx.role == "admin" or kind != "every":
            return
        try:
            seconds = every_seconds(expr)
        except ScheduleError as exc:
            raise ToolError(str(exc)) from None
        if seconds < MIN_USER_EVERY_S:
            raise ToolError(f"every: at least {MIN_USER_EVERY_S}s between messages")

    async def list_jobs(self, _args: ScheduleListArgs, ctx: ToolContext) -> str:
        with i18n.language(i18n.DEFAULT):  # a tool result: the model reads English
            return await self._scheduler.listing(None if ctx.role == "admin" else ctx.requester)

    async def remove_job(self, args: ScheduleRemoveArgs, ctx: ToolContext) -> str:
        job_id = args.id.strip()
        job = await self._scheduler.get(job_id)
        if job is None or (ctx.role != "admin" and job.owner != ctx.requester):
            raise ToolError(f"you have no job with id {job_id[:64]!r}")
        if job.source == "config":
            raise ToolError(f"job {job_id} comes from the config file; change it there")
        if (ctx.tainted or ctx.private) and job.owner != ctx.requester:
            # Told by someone else's text, the model could remove other people's jobs: in
            # such a turn only the requester's own go; an admin uses `!jobs remove ID`.
            raise ToolError(
                f"job {job_id} is not yours, and this turn read text you did not write:"
                " remove it with the !jobs remove command instead"
            )
        await self._scheduler.remove(job_id)
        return f"removed job {job_id}"

    def tools(self) -> list[Tool[Any]]:
        user = roles_from("user")
        return [
            Tool(
                name="schedule_add",
                description=(
                    "Schedule a reminder or a recurring message in this room: when (exactly "
                    "one of cron, every, at) and what (exactly one of message, prompt)."
                ),
                args=ScheduleAddArgs,
                run=self.add_job,
                roles=user,
                changes_state=True,
                egress_when=_sends_out,
                confirm_when=_elsewhere,
                precheck=self._room_allowed,
                timeout_s=10,
            ),
            Tool(
                name="schedule_list",
                description="List scheduled jobs with their ids and next run times.",
                args=ScheduleListArgs,
                run=self.list_jobs,
                roles=user,
                # An admin's listing holds other rooms' jobs and prompts: private data.
                reads_private=True,
                timeout_s=10,
            ),
            Tool(
                name="schedule_remove",
                description="Remove a scheduled job by its id.",
                args=ScheduleRemoveArgs,
                run=self.remove_job,
                roles=user,
                changes_state=True,
                timeout_s=10,
            ),
        ]


def make_schedule_tools(scheduler: Scheduler, rooms: RoomDirectory) -> list[Tool[Any]]:
    return ScheduleTools(scheduler, rooms).tools()
