"""The whole configuration: one model per section, and the secrets and files it holds."""

from __future__ import annotations

from pathlib import Path

from pydantic import PrivateAttr, model_validator

from bot.config.base import Frozen
from bot.config.conversation import AccessSettings, ChatSettings, ConfirmSettings
from bot.config.endpoints import LLMSettings, NextcloudSettings, ServerSettings
from bot.config.limits import LimitsSettings
from bot.config.mcp import McpSettings
from bot.config.schedules import ScheduleSettings
from bot.config.storage import StorageSettings
from bot.config.tools import ToolsSettings


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
