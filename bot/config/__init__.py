"""Settings: the TOML file, TALKBOT_* overrides and *_file secrets, validated once."""

from bot.config.base import TOKEN_PATTERN, Approver, Role
from bot.config.conversation import AccessSettings, ChatSettings, ConfirmSettings
from bot.config.endpoints import PLACEHOLDER_SECRET, LLMSettings, NextcloudSettings, ServerSettings
from bot.config.limits import LimitsSettings
from bot.config.loading import default_config_path, load_settings, settings_from_mapping
from bot.config.mcp import McpServerSettings
from bot.config.schedules import EVERY_PATTERN, ScheduleSettings
from bot.config.settings import Settings
from bot.config.storage import StorageSettings
from bot.config.tools import (
    FilesToolSettings,
    HttpFetchSettings,
    ToolPolicy,
    ToolsSettings,
    WebSearchSettings,
)
from bot.config.urls import strip_credentials
from bot.config.warnings import config_warnings

__all__ = [
    "EVERY_PATTERN",
    "PLACEHOLDER_SECRET",
    "TOKEN_PATTERN",
    "AccessSettings",
    "Approver",
    "ChatSettings",
    "ConfirmSettings",
    "FilesToolSettings",
    "HttpFetchSettings",
    "LLMSettings",
    "LimitsSettings",
    "McpServerSettings",
    "NextcloudSettings",
    "Role",
    "ScheduleSettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "ToolPolicy",
    "ToolsSettings",
    "WebSearchSettings",
    "config_warnings",
    "default_config_path",
    "load_settings",
    "settings_from_mapping",
    "strip_credentials",
]
