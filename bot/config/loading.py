"""Loading: the TOML file, TALKBOT_* overrides and *_file secrets, validated once."""

from __future__ import annotations

import os
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError

from bot.config.settings import Settings
from bot.config.tools import ToolPolicy, ToolsSettings
from bot.errors import ConfigError

ENV_PREFIX = "TALKBOT_"
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
            text = _secret_from(table.pop(file_key), f"{section}.{file_key}", read, problems)
            if text is not None:
                table[field] = text
    return problems


def _secret_from(
    raw: object, where: str, read: list[Path], problems: list[tuple[str, str]]
) -> str | None:
    """A secret file's text, stripped; None, and a problem naming ``where``, if unreadable.
    ``read`` collects the paths (the file tools may never reach them)."""
    path = Path(str(raw)).expanduser()
    read.append(path)
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        problems.append((where, f"cannot read {path}: {reason}"))
        return None


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
                text = _secret_from(raw, f"{where}.{name}", read, problems)
                if text is not None:
                    values[name] = text
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
