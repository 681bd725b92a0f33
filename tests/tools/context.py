"""The ToolContext a test runs a tool in: alice, a user, in room1, at time 0 unless told."""

from __future__ import annotations

from typing import Any

from bot.config import Role
from bot.tools import ToolContext


def ctx(
    role: Role = "user",
    *,
    uid: str = "alice",
    room: str = "room1",
    now: float = 0.0,
    **extra: Any,
) -> ToolContext:
    """``extra`` sets the other fields: timezone, unattended, tainted, private, request."""
    return ToolContext(f"users/{uid}", role, room, now=lambda: now, **extra)
