"""``[[schedules]]``: messages and prompts the config sends to rooms on a timetable."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bot.config.base import TOKEN_PATTERN, Frozen, check_timezone

EVERY_PATTERN = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


class ScheduleSettings(Frozen):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    cron: str | None = None
    every: str | None = None
    at: str | None = None
    timezone: str | None = None
    room: str
    message: str | None = None
    prompt: str | None = None
    misfire: Literal["once", "skip"] = "once"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator("room")
    @classmethod
    def _room(cls, value: str) -> str:
        if not TOKEN_PATTERN.match(value):
            raise ValueError("must be a Talk room token ([a-z0-9]{4,30})")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:  # noqa: PLR2004 - crontab fields
            raise ValueError("must have five fields: minute hour day month day-of-week")
        return value

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            match = EVERY_PATTERN.match(value)
            if not match or int(match.group(1)) == 0:
                raise ValueError("must be a number and a unit, like 90s, 30m, 2h or 1d")
        return value

    @field_validator("at")
    @classmethod
    def _at(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("must be an ISO date-time like 2026-12-24T09:00") from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleSettings:
        triggers = [name for name in ("cron", "every", "at") if getattr(self, name)]
        if len(triggers) != 1:
            raise ValueError("give exactly one of cron, every or at")
        if (self.message is None) == (self.prompt is None):
            raise ValueError("give exactly one of message or prompt")
        return self
