"""Where talkbot listens and whom it talks to: ``[server]``, ``[nextcloud]``, ``[llm]``."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from bot.config.base import Frozen

# deploy/talkbot.example.toml's bot_secret: a copied config must not run with it.
PLACEHOLDER_SECRET = "change-me-to-a-random-secret-of-at-least-forty-characters"  # noqa: S105 - refused, not used


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
