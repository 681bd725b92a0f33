"""Who may talk to the bot and how it answers: ``[access]``, ``[chat]``, ``[confirm]``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bot import i18n
from bot.config.base import TOKEN_PATTERN, Frozen, Role, check_timezone


class GroupRoles(Frozen):
    """``[access.groups]``: Nextcloud groups whose members get a role; the highest wins."""

    admin: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    guest: tuple[str, ...] = ()

    @field_validator("admin", "user", "guest")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() for name in value):
            raise ValueError("a group name must not be empty")
        return value

    def role_of(self, groups: tuple[str, ...]) -> Role | None:
        """The highest role these groups map to; None when none of them is mapped."""
        mine = set(groups)
        ranked: tuple[Role, ...] = ("admin", "user", "guest")
        return next((role for role in ranked if mine.intersection(getattr(self, role))), None)

    def mapped(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.admin, *self.user, *self.guest)))


class AccessSettings(Frozen):
    admins: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    groups: GroupRoles = GroupRoles()
    guest_role: Literal["none", "guest"] = "none"
    admin_room: str = ""
    command_prefix: str = Field(default="!", min_length=1, max_length=3)

    @field_validator("admin_room")
    @classmethod
    def _token_shape(cls, value: str) -> str:
        if value and not TOKEN_PATTERN.match(value):
            raise ValueError("must be a Talk room token ([a-z0-9]{4,30})")
        return value


class ChatSettings(Frozen):
    bot_name: str = Field(default="talkbot", min_length=1)
    respond_in_groups: Literal["mention", "all"] = "mention"
    history_messages: int = Field(default=30, ge=0, le=500)
    history_chars: int = Field(default=24_000, ge=0)
    persona: str = "You are a helpful assistant for our team."
    timezone: str = "UTC"
    # The fixed texts' language when Nextcloud does not say the person's (gettext form).
    language: str = "en"
    greeting: str = ""

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        code = i18n.normalize(value)
        if code is None:
            raise ValueError(f'not a language code: {value!r} (like "en", "de" or "pt_BR")')
        return code


class ConfirmSettings(Frozen):
    ttl_s: int = Field(default=600, ge=10)
    yes_words: tuple[str, ...] = ("yes", "y", "confirm", "ok")
    no_words: tuple[str, ...] = ("no", "n", "cancel")

    @model_validator(mode="after")
    def _words_disjoint(self) -> ConfirmSettings:
        yes = {w.casefold() for w in self.yes_words}
        no = {w.casefold() for w in self.no_words}
        if not yes:
            raise ValueError("yes_words must not be empty")
        if overlap := yes & no:
            raise ValueError(f"yes_words and no_words share {sorted(overlap)}")
        return self
