"""What every settings section shares: the frozen model, roles, room tokens, time zones."""

from __future__ import annotations

import re
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

Role = Literal["none", "guest", "user", "admin"]
Approver = Literal["requester", "admin", "either"]
TOKEN_PATTERN = re.compile(r"^[a-z0-9]{4,30}$")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {value!r}") from None
    return value
