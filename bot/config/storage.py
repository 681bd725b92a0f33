"""``[storage]``: the embedded SQLite file or a shared PostgreSQL database."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from bot.config.base import Frozen
from bot.config.urls import strip_credentials


class StorageSettings(Frozen):
    """``path``: the embedded SQLite store (one process). ``url``: a PostgreSQL database
    that several replicas share; its password in the URL or from ``password_file``."""

    path: Path = Path("talkbot.sqlite3")
    url: str = ""
    password: SecretStr = SecretStr("")
    # Replicas: a dead one's rooms wait this long before another takes them up.
    lease_s: float = Field(default=15.0, ge=3.0, le=600.0)
    # SQLite: "full" syncs each (group) commit, so an acknowledged webhook survives a power
    # loss; "normal" survives a crash of the process only. PostgreSQL: its own settings.
    synchronous: Literal["full", "normal"] = "full"

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError('must be a PostgreSQL URL ("postgresql://user@host/database")')
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            raise ValueError("must name the database (postgresql://user@host/database)")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> StorageSettings:
        if self.password.get_secret_value() and not self.url:
            raise ValueError("password_file is for the PostgreSQL store: set url too")
        if self.password.get_secret_value() and self.url_password:
            raise ValueError("the password is in url and in password_file: keep one")
        return self

    @property
    def url_password(self) -> str:
        """The password in ``url`` or its ``?password=`` (a secret: redacted from logs)."""
        parts = urlsplit(self.url)
        return parts.password or parse_qs(parts.query).get("password", [""])[0]

    @property
    def backend(self) -> Literal["sqlite", "postgres"]:
        return "postgres" if self.url else "sqlite"

    @property
    def location(self) -> str:
        """Where the store is, fit for logs and chat: the path, or the URL without password."""
        return strip_credentials(self.url) if self.url else str(self.path)
