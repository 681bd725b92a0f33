"""``[[mcp.servers]]``: the Model Context Protocol servers whose tools talkbot offers."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from bot.config.base import Frozen

MCP_SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,23}$")


class McpServerSettings(Frozen):
    """One ``[[mcp.servers]]``: a Model Context Protocol server whose tools talkbot offers
    as ``<name>__<tool>``, under its roles and confirmation rules (bot/tools/mcp/)."""

    name: str
    # stdio: talkbot starts the process (its environment: PATH, HOME, SHELL, TERM and env).
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, SecretStr] = Field(default_factory=dict)
    # streamable HTTP: the endpoint and the headers sent with every request.
    url: str = ""
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    # Offered to these roles and every role above them; [tools.<server>__<tool>] overrides.
    roles: tuple[Literal["guest", "user", "admin"], ...] = ("admin",)
    confirm: Literal["none", "writes", "all"] = "writes"
    timeout_s: float = Field(default=30, gt=0, le=600)
    include: tuple[str, ...] = ("*",)  # tool-name patterns (fnmatch), as the server names them
    exclude: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MCP_SERVER_NAME.match(value):
            raise ValueError(
                "must be 1-24 of a-z, 0-9, _ and -, starting with a letter or digit"
                " (tools appear as <name>__<tool>)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if bool(self.command) == bool(self.url):
            raise ValueError(f"server {self.name!r}: give either command (stdio) or url (HTTP)")
        if self.env and not self.command:
            raise ValueError(
                f"server {self.name!r}: env is for a command; an HTTP server takes headers"
            )
        if self.headers and not self.url:
            raise ValueError(f"server {self.name!r}: headers are for a url; a command takes env")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command else "http"

    def secret_values(self) -> list[str]:
        return [v.get_secret_value() for v in (*self.env.values(), *self.headers.values())]


class McpSettings(Frozen):
    servers: tuple[McpServerSettings, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> McpSettings:
        names = [server.name for server in self.servers]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"server name {twice[0]!r} is used twice")
        return self
