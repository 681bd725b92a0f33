"""``[tools]``: the built-in tool families' settings and every tool's policy overrides."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.config.base import Approver, Role


class ToolPolicy(BaseModel):
    """Per-tool overrides from ``[tools.<name>]``; None keeps the tool's own default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = None
    roles: tuple[Role, ...] | None = None
    confirm: bool | None = None
    approver: Approver | None = None
    # A tool's kind (#13) can be added to, never taken away: true adds it, false is refused.
    reads_private: bool | None = None
    brings_untrusted: bool | None = None
    egress: bool | None = None
    changes_state: bool | None = None

    @field_validator("reads_private", "brings_untrusted", "egress", "changes_state")
    @classmethod
    def _kinds_only_add(cls, value: bool | None) -> bool | None:
        if value is False:
            raise ValueError("a tool's kind can be added (true), not removed")
        return value


class FilesToolSettings(ToolPolicy):
    root: Path = Path("/srv/talkbot/files")
    max_read_bytes: int = Field(default=256_000, ge=1)
    max_write_bytes: int = Field(default=1_000_000, ge=1)


class WebSearchSettings(ToolPolicy):
    searxng_url: str = ""
    max_results: int = Field(default=5, ge=1, le=20)

    @field_validator("searxng_url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be empty or start with http:// or https://")
        return value


class HttpFetchSettings(ToolPolicy):
    max_bytes: int = Field(default=2_000_000, ge=1)
    max_chars: int = Field(default=20_000, ge=100)
    timeout_s: float = Field(default=15, gt=0)
    # HTML becomes text in a worker process of its own, within these limits (H01): the
    # HTML is cut at max_html_bytes; lists and quotes nested deeper than max_depth are
    # refused; the worker is killed after convert_timeout_s or over convert_memory_mb;
    # at most max_parallel_conversions run at once (others wait up to convert_timeout_s).
    max_html_bytes: int = Field(default=1_000_000, ge=1)
    max_depth: int = Field(default=100, ge=1)
    convert_timeout_s: float = Field(default=10, gt=0, le=600)
    convert_memory_mb: int = Field(default=512, ge=64)
    max_parallel_conversions: int = Field(default=2, ge=1, le=64)
    # Ports http_fetch may connect to; addresses must be public whatever the port.
    ports: tuple[int, ...] = Field(default=(80, 443), min_length=1)

    @field_validator("ports")
    @classmethod
    def _ports_in_range(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= port <= 65535 for port in value):  # noqa: PLR2004 - TCP port range
            raise ValueError("ports must be between 1 and 65535")
        return value


class ToolsSettings(BaseModel):
    """``[tools]``: family settings by name, any other table is a per-tool policy."""

    model_config = ConfigDict(frozen=True, extra="allow")
    # Any other [tools.<name>] table is that tool's policy, validated as one.
    __pydantic_extra__: dict[str, ToolPolicy] = Field(init=False)

    files: FilesToolSettings = FilesToolSettings()
    web_search: WebSearchSettings = WebSearchSettings()
    http_fetch: HttpFetchSettings = HttpFetchSettings()
    # Python modules exporting make_tools(deps) -> list[Tool], for a deployment's own tools.
    modules: tuple[str, ...] = ()

    def policy(self, tool_name: str) -> ToolPolicy:
        if tool_name in type(self).model_fields:
            value = getattr(self, tool_name)
        else:
            value = (self.model_extra or {}).get(tool_name)
        return value if isinstance(value, ToolPolicy) else ToolPolicy()
