"""``[limits]``: caps per turn and per person, and the daily token quotas."""

from __future__ import annotations

from pydantic import Field, field_validator

from bot.config.base import Frozen

# Roles that can have a daily token limit of their own (``none`` never gets a turn).
QUOTA_ROLES = ("guest", "user", "admin")


class DailyTokens(Frozen):
    """``[limits.roles.<role>]`` or ``[limits.groups.<group>]``: model tokens per person and
    day for that role, or for the group's members; 0 = unlimited."""

    tokens_per_day: int = Field(ge=0)


class LimitsSettings(Frozen):
    """Caps on what one turn or one person can set off, whatever the model is told (#13),
    and daily token quotas (#16; bot/quotas.py says which one applies to whom)."""

    tool_calls_per_round: int = Field(default=16, ge=1)
    tool_calls_per_turn: int = Field(default=48, ge=1)
    fetches_per_turn: int = Field(default=12, ge=0)  # http_fetch and web_search together
    jobs_per_person: int = Field(default=20, ge=0)  # admins too; config jobs do not count
    jobs_per_room: int = Field(default=50, ge=0)
    # Model tokens (prompt + completion) per calendar day in [chat] timezone; 0 = unlimited.
    tokens_per_day: int = Field(default=0, ge=0)  # per person
    tokens_per_room_day: int = Field(default=0, ge=0)
    roles: dict[str, DailyTokens] = Field(default_factory=dict)
    groups: dict[str, DailyTokens] = Field(default_factory=dict)
    # Prices per 1000 tokens, for the cost estimate of !usage (shown when one is set).
    price_per_1k_prompt: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    price_per_1k_completion: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    currency: str = Field(default="", max_length=16)

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, value: dict[str, DailyTokens]) -> dict[str, DailyTokens]:
        for role in value:
            if role not in QUOTA_ROLES:
                raise ValueError(f"unknown role {role!r}: use guest, user or admin")
        return value

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: dict[str, DailyTokens]) -> dict[str, DailyTokens]:
        if any(not name.strip() for name in value):
            raise ValueError("a group name must not be empty")
        return value

    @property
    def priced(self) -> bool:
        return bool(self.price_per_1k_prompt or self.price_per_1k_completion)
