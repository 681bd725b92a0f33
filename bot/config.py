"""Settings: the TOML file, TALKBOT_* overrides and *_file secrets, validated once."""

from __future__ import annotations

import os
import re
import tomllib
import types
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bot import i18n
from bot.errors import ConfigError

Role = Literal["none", "guest", "user", "admin"]
Approver = Literal["requester", "admin", "either"]

ENV_PREFIX = "TALKBOT_"
EVERY_PATTERN = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
TOKEN_PATTERN = re.compile(r"^[a-z0-9]{4,30}$")
# deploy/talkbot.example.toml's bot_secret: a copied config must not run with it.
PLACEHOLDER_SECRET = "change-me-to-a-random-secret-of-at-least-forty-characters"  # noqa: S105 - refused, not used
# Field types whose environment overrides are text as written, never TOML numbers or booleans.
TEXT_TYPES = (str, SecretStr, Path)
# Secret fields that may also be read from "<name>_file" (systemd LoadCredential=).
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "nextcloud": ("bot_secret", "app_password"),
    "llm": ("api_key",),
    "storage": ("password",),
}
SECRET_FILE_KEYS = {
    (section, f"{name}_file") for section, names in SECRET_FIELDS.items() for name in names
}


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8585, ge=0, le=65535)
    webhook_path: str = "/webhook"
    public_url: str = ""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # A client gets this long to send its request headers, and as long again for the
    # whole body; then it is cut off (W09, H05).
    body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Inbound connections open at once; None: derived from the descriptor limit (H05).
    max_connections: int | None = Field(default=None, ge=1)
    # Source addresses allowed to post webhooks (CIDRs); empty allows any.
    allowed_sources: tuple[str, ...] = ()

    @field_validator("webhook_path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("allowed_sources")
    @classmethod
    def _sources_are_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress  # noqa: PLC0415 - only needed for this check

        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network") from None
        return value

    def webhook_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}{self.webhook_path}"


class NextcloudSettings(Frozen):
    url: str = Field(min_length=1)
    bot_secret: SecretStr
    # An account for Nextcloud's provisioning API (#16): an ordinary user made group
    # admin of only the groups talkbot needs, with an app password. Optional.
    user: str = ""
    app_password: SecretStr = SecretStr("")
    # How long a person's groups and language are kept before Nextcloud is asked again,
    # and how long a known answer outlives an unreachable Nextcloud (then config roles).
    groups_ttl_s: int = Field(default=300, ge=10, le=86_400)
    groups_stale_s: int = Field(default=3600, ge=0, le=7 * 86_400)

    @model_validator(mode="after")
    def _account_complete(self) -> NextcloudSettings:
        if bool(self.user) != bool(self.app_password.get_secret_value()):
            raise ValueError("user and app_password (or app_password_file) go together")
        return self

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("bot_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() == PLACEHOLDER_SECRET:
            raise ValueError(
                "is the placeholder from the example config: "
                "generate one with `openssl rand -hex 32`"
            )
        length = len(value.get_secret_value().encode())
        if not 40 <= length <= 128:  # noqa: PLR2004 - Talk's own limits
            raise ValueError(f"must be 40-128 characters (Talk's limit), got {length}")
        return value


class LLMSettings(Frozen):
    base_url: str = "http://127.0.0.1:11434/v1"
    api_key: SecretStr = SecretStr("")
    model: str = "qwen3:8b"
    flavor: Literal["openai", "openwebui"] = "openai"
    max_rounds: int = Field(default=8, ge=1, le=50)
    timeout_s: float = Field(default=60, gt=0, le=600)
    max_tokens: int | None = Field(default=None, ge=1)
    # Turns talking to the model at once, over all rooms.
    concurrency: int = Field(default=4, ge=1, le=256)

    @field_validator("base_url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_credential(self) -> LLMSettings:
        # user:password@ in the URL is sent as HTTP Basic auth, api_key as a Bearer token:
        # a request carries one Authorization header.
        if urlsplit(self.base_url).password is not None and self.api_key.get_secret_value():
            raise ValueError(
                "base_url has a user:password@ and api_key is set: an endpoint takes one;"
                " keep the one your server expects"
            )
        return self

    @property
    def url_password(self) -> str:
        """The password in ``base_url`` (a secret: redacted from logs like the key)."""
        return urlsplit(self.base_url).password or ""


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


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {value!r}") from None
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
        return _check_timezone(value)

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


class StorageSettings(Frozen):
    """``path``: the embedded SQLite store (one process). ``url``: a PostgreSQL database
    that several replicas share; its password in the URL or from ``password_file``."""

    path: Path = Path("talkbot.sqlite3")
    url: str = ""
    password: SecretStr = SecretStr("")
    # Replicas: a dead one's rooms wait this long before another takes them up.
    lease_s: float = Field(default=15.0, ge=3.0, le=600.0)

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
        return None if value is None else _check_timezone(value)

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


# Roles that can have a daily token limit of their own (``none`` never gets a turn).
QUOTA_ROLES = ("guest", "user", "admin")


class DailyTokens(Frozen):
    """``[limits.roles.<role>]`` or ``[limits.groups.<group>]``: model tokens per person and
    day for that role, or for the group's members; 0 = unlimited."""

    tokens_per_day: int = Field(ge=0)


MCP_SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,23}$")


class McpServerSettings(Frozen):
    """One ``[[mcp.servers]]``: a Model Context Protocol server whose tools talkbot offers
    as ``<name>__<tool>``, under its roles and confirmation rules (bot/tools/mcp.py)."""

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


class Settings(Frozen):
    server: ServerSettings = ServerSettings()
    nextcloud: NextcloudSettings
    llm: LLMSettings = LLMSettings()
    access: AccessSettings = AccessSettings()
    chat: ChatSettings = ChatSettings()
    confirm: ConfirmSettings = ConfirmSettings()
    storage: StorageSettings = StorageSettings()
    tools: ToolsSettings = ToolsSettings()
    limits: LimitsSettings = LimitsSettings()
    mcp: McpSettings = McpSettings()
    schedules: tuple[ScheduleSettings, ...] = ()
    # The config file and the secret files these settings were read from (not a key).
    _source_files: tuple[Path, ...] = PrivateAttr(default=())

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, for the log redactor (empty ones dropped)."""
        values = [
            self.nextcloud.bot_secret.get_secret_value(),
            self.nextcloud.app_password.get_secret_value(),
            self.llm.api_key.get_secret_value(),
            self.llm.url_password,
            self.storage.password.get_secret_value(),
            self.storage.url_password,
            *(value for server in self.mcp.servers for value in server.secret_values()),
        ]
        return [value for value in values if value]

    @property
    def source_files(self) -> tuple[Path, ...]:
        """Files holding secrets: nothing a tool may reach (the files root is checked)."""
        return self._source_files

    @model_validator(mode="after")
    def _unique_schedule_ids(self) -> Settings:
        seen: set[str] = set()
        for schedule in self.schedules:
            if schedule.id in seen:
                raise ValueError(f"schedule id {schedule.id!r} is used twice")
            seen.add(schedule.id)
        return self


def config_warnings(settings: Settings) -> list[tuple[str, str]]:
    """(field, reason) for what starts but is probably not meant: example host names, half
    an admin setup. The daemon runs all the same; ``check`` prints these, ``serve`` logs them."""
    urls = {
        "nextcloud.url": settings.nextcloud.url,
        "server.public_url": settings.server.public_url,
        "llm.base_url": settings.llm.base_url,
        "tools.web_search.searxng_url": settings.tools.web_search.searxng_url,
    }
    warnings = [
        (field, f"{host} is an example host name from the docs, not a real server")
        for field, url in urls.items()
        if (host := _example_host(url))
    ]
    return warnings + _admin_warnings(settings.access)


def _example_host(url: str) -> str | None:
    """The host of ``url`` if it is under example.com, example.org, ... or .example."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return None
    labels = host.split(".")
    return host if "example" in labels[-2:] else None


def _admin_warnings(access: AccessSettings) -> list[tuple[str, str]]:
    if access.admins and not access.admin_room:
        return [
            (
                "access.admin_room",
                "is empty, so the admins have no room for admin commands: "
                "set the token of a private room with them and the bot",
            )
        ]
    if not access.admins:
        room = f"the admin room {access.admin_room}" if access.admin_room else "admin commands"
        return [("access.admins", f"is empty, so nobody can use {room} or the admin tools")]
    return []


def strip_credentials(url: str) -> str:
    """A URL as it may be shown: a user:password@ part and the query (a key?) cut out."""
    scheme, sep, rest = url.partition("://")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"


def default_config_path(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("TALKBOT_CONFIG") or "talkbot.toml")


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate; every problem is raised together as ConfigError."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([(str(path), "config file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([(str(path), f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(path), f"not valid TOML: {exc}")]) from None
    settings = settings_from_mapping(raw, environ)
    settings._source_files = (path, *settings.source_files)  # the loader fills it, once
    return settings


def settings_from_mapping(raw: dict[str, Any], environ: Mapping[str, str]) -> Settings:
    data = _apply_env(raw, environ)
    secret_files: list[Path] = []
    problems = _read_secret_files(data, secret_files)
    problems += _read_mcp_secret_files(data, secret_files)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems += [(_field_name(err["loc"]), _reason(err)) for err in exc.errors()]
    else:
        problems += _cross_field_problems(settings)
    if problems:
        raise ConfigError(problems)
    settings._source_files = tuple(secret_files)  # the loader fills it, once
    return settings


def _cross_field_problems(settings: Settings) -> list[tuple[str, str]]:
    """What no single section can judge alone."""
    if settings.access.groups.mapped() and not settings.nextcloud.user:
        return [
            (
                "access.groups",
                "maps Nextcloud groups, but no account can read them:"
                " set [nextcloud] user and app_password_file",
            )
        ]
    return []


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = _deep_copy(raw)
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == "TALKBOT_CONFIG":
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = _parse_env_value(value, text=_takes_text(keys))
    return data


def _parse_env_value(value: str, *, text: bool) -> Any:
    """A TOML value (numbers, booleans, lists), else the plain string.

    A text field takes the value as written (``TALKBOT_LLM__MODEL=2024`` is the model
    "2024"); only a quoted TOML string has its quotes taken off.
    """
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
    return value if text and not isinstance(parsed, str) else parsed


def _takes_text(keys: list[str]) -> bool:
    """Whether the setting at ``keys`` (section, key...) holds text, by its model's type."""
    if tuple(keys) in SECRET_FILE_KEYS:  # a path
        return True
    annotation: Any = Settings
    for key in keys:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        field = annotation.model_fields.get(key)
        if field is not None:
            annotation = field.annotation
        elif annotation is ToolsSettings:  # any other [tools.<name>] table is a policy
            annotation = ToolPolicy
        else:
            return False
    return _is_text(annotation)


def _is_text(annotation: Any) -> bool:
    if get_origin(annotation) is Literal:
        return all(isinstance(option, str) for option in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        options = [option for option in get_args(annotation) if option is not type(None)]
        return all(_is_text(option) for option in options)
    return isinstance(annotation, type) and issubclass(annotation, TEXT_TYPES)


def _read_secret_files(data: dict[str, Any], read: list[Path]) -> list[tuple[str, str]]:
    """Replace each ``<key>_file`` by the file's text; ``read`` collects the paths."""
    problems: list[tuple[str, str]] = []
    for section, fields in SECRET_FIELDS.items():
        table = data.get(section)
        if not isinstance(table, dict):
            continue
        for field in fields:
            file_key = f"{field}_file"
            if file_key not in table:
                continue
            path = Path(str(table.pop(file_key))).expanduser()
            read.append(path)
            try:
                table[field] = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                problems.append((f"{section}.{file_key}", f"cannot read {path}: {reason}"))
    return problems


def _read_mcp_secret_files(data: dict[str, Any], read: list[Path]) -> list[tuple[str, str]]:
    """``env_files`` and ``headers_files`` of each ``[[mcp.servers]]``: a name -> path
    table whose files' texts join ``env`` and ``headers`` (their values are secrets)."""
    mcp = data.get("mcp")
    servers = mcp.get("servers") if isinstance(mcp, dict) else None
    if not isinstance(servers, list):
        return []
    problems: list[tuple[str, str]] = []
    for index, server in enumerate(servers):
        if not isinstance(server, dict):
            continue
        for key, target in (("env_files", "env"), ("headers_files", "headers")):
            files = server.pop(key, None)
            if files is None:
                continue
            where = f"mcp.servers[{index}].{key}"
            if not isinstance(files, dict):
                problems.append((where, "must be a table of name = path"))
                continue
            values = server.setdefault(target, {})
            if not isinstance(values, dict):
                continue  # the model names the bad table
            for name, raw in files.items():
                path = Path(str(raw)).expanduser()
                read.append(path)
                try:
                    values[name] = path.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                    problems.append((f"{where}.{name}", f"cannot read {path}: {reason}"))
    return problems


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
        else:
            parts.append(part)
    return ".".join(parts) or "(top level)"


def _reason(error: Any) -> str:
    if error["type"] == "missing":
        return "required"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
