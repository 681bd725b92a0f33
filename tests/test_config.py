"""Config: TOML, TALKBOT_* overrides, *_file secrets, and every bad field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings, settings_from_mapping
from bot.errors import ConfigError

SECRET = "x" * 48
MINIMAL = f'[nextcloud]\nurl = "https://cloud.example.com/"\nbot_secret = "{SECRET}"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "talkbot.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), {})
    assert settings.nextcloud.url == "https://cloud.example.com"
    assert settings.server.host == "127.0.0.1"  # W15: loopback by default
    assert settings.server.port == 8585
    assert settings.server.webhook_url() == "http://127.0.0.1:8585/webhook"
    assert settings.llm.max_rounds == 8
    assert settings.access.guest_role == "none"
    assert settings.confirm.yes_words == ("yes", "y", "confirm", "ok")


def test_env_overrides_parse_as_toml_values(tmp_path: Path) -> None:
    env = {
        "TALKBOT_LLM__MAX_ROUNDS": "3",
        "TALKBOT_ACCESS__ADMINS": '["alice", "bob"]',
        "TALKBOT_CHAT__PERSONA": "plain words, not TOML",
        "TALKBOT_TOOLS__FILES__ROOT": "/srv/x",
        "UNRELATED": "1",
    }
    settings = load_settings(write(tmp_path, MINIMAL), env)
    assert settings.llm.max_rounds == 3
    assert settings.access.admins == ("alice", "bob")
    assert settings.chat.persona == "plain words, not TOML"
    assert str(settings.tools.files.root) == "/srv/x"


def test_env_values_for_text_fields_are_taken_as_written(tmp_path: Path) -> None:
    env = {
        "TALKBOT_LLM__MODEL": "2024",  # a model named by its year, not the number 2024
        "TALKBOT_LLM__API_KEY": "12345678901234567890",  # an all-digit key stays text
        "TALKBOT_CHAT__BOT_NAME": "true",
        "TALKBOT_CHAT__PERSONA": '"quoted as TOML"',  # a TOML string still works
        "TALKBOT_NEXTCLOUD__BOT_SECRET": "1" * 64,
        "TALKBOT_LLM__TIMEOUT_S": "2.5",  # numbers, booleans and lists still parse
        "TALKBOT_TOOLS__FILE_WRITE__ENABLED": "false",
    }
    settings = load_settings(write(tmp_path, MINIMAL), env)
    assert settings.llm.model == "2024"
    assert settings.llm.api_key.get_secret_value() == "12345678901234567890"
    assert settings.chat.bot_name == "true"
    assert settings.chat.persona == "quoted as TOML"
    assert settings.nextcloud.bot_secret.get_secret_value() == "1" * 64
    assert settings.llm.timeout_s == 2.5
    assert settings.tools.policy("file_write").enabled is False


def test_secret_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "bot_secret"
    secret_file.write_text("f" * 64 + "\n")
    text = f'[nextcloud]\nurl = "https://c.example"\nbot_secret_file = "{secret_file}"\n'
    settings = load_settings(write(tmp_path, text), {})
    assert settings.nextcloud.bot_secret.get_secret_value() == "f" * 64


def test_unreadable_secret_file_names_the_field(tmp_path: Path) -> None:
    text = '[nextcloud]\nurl = "https://c.example"\nbot_secret_file = "/nonexistent/secret"\n'
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {})
    fields = [field for field, _ in info.value.problems]
    assert "nextcloud.bot_secret_file" in fields


def test_every_bad_field_is_named_together() -> None:
    raw = {
        "nextcloud": {"url": "cloud.example.com", "bot_secret": "short"},
        "llm": {"flavor": "anthropic", "max_rounds": 0},
        "chat": {"timezone": "Mars/Olympus"},
        "access": {"admin_room": "Not A Token"},
        "typo_section": {},
        "schedules": [{"id": "a", "room": "abcd", "cron": "0 9 * *", "message": "m"}],
    }
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    fields = {field for field, _ in info.value.problems}
    assert fields >= {
        "nextcloud.url",
        "nextcloud.bot_secret",
        "llm.flavor",
        "llm.max_rounds",
        "chat.timezone",
        "access.admin_room",
        "typo_section",
        "schedules[0].cron",
    }
    assert info.value.one_line().startswith("invalid config: ")
    assert SECRET not in str(info.value)


def test_secret_values_never_appear_in_errors() -> None:
    raw = {"nextcloud": {"url": "ftp://x", "bot_secret": "s" * 200}}
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    assert "s" * 50 not in str(info.value)


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ({"every": "30m", "cron": "* * * * *", "message": "m"}, "exactly one of cron"),
        ({"every": "30m"}, "exactly one of message or prompt"),
        ({"every": "0s", "message": "m"}, "like 90s"),
        ({"every": "soon", "message": "m"}, "like 90s"),
        ({"at": "tomorrow", "message": "m"}, "ISO date-time"),
        ({"every": "1h", "message": "m", "timezone": "Nowhere/City"}, "IANA"),
    ],
)
def test_bad_schedules_are_explained(schedule: dict[str, str], reason: str) -> None:
    raw = {
        "nextcloud": {"url": "https://x", "bot_secret": SECRET},
        "schedules": [{"id": "s1", "room": "abcd", **schedule}],
    }
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    assert reason in str(info.value)


def test_duplicate_schedule_ids_are_refused() -> None:
    job = {"id": "same", "room": "abcd", "every": "1h", "message": "m"}
    raw = {"nextcloud": {"url": "https://x", "bot_secret": SECRET}, "schedules": [job, job]}
    with pytest.raises(ConfigError, match="used twice"):
        settings_from_mapping(raw, {})


def test_per_tool_policy_tables() -> None:
    raw = {
        "nextcloud": {"url": "https://x", "bot_secret": SECRET},
        "tools": {
            "file_write": {"roles": ["admin"], "approver": "either"},
            "files": {"root": "/srv/f", "confirm": True},
        },
    }
    tools = settings_from_mapping(raw, {}).tools
    assert tools.policy("file_write").approver == "either"
    assert tools.policy("files").confirm is True
    assert tools.policy("unknown_tool").roles is None


def test_bad_tool_policy_is_named() -> None:
    raw = {
        "nextcloud": {"url": "https://x", "bot_secret": SECRET},
        "tools": {"file_write": {"roles": ["superuser"]}},
    }
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    assert info.value.problems[0][0] == "tools.file_write.roles[0]"


def test_limits_take_roles_groups_and_prices(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[limits]\ntokens_per_day = 1000\nprice_per_1k_prompt = 0.25\ncurrency = "EUR"\n'
        "[limits.roles.guest]\ntokens_per_day = 10\n"
        '[limits.groups."research team"]\ntokens_per_day = 0\n'
    )
    env = {"TALKBOT_LIMITS__ROLES__ADMIN__TOKENS_PER_DAY": "5000"}
    limits = load_settings(write(tmp_path, text), env).limits
    assert (limits.tokens_per_day, limits.tokens_per_room_day) == (1000, 0)
    assert {role: v.tokens_per_day for role, v in limits.roles.items()} == {
        "guest": 10,
        "admin": 5000,
    }
    assert limits.groups["research team"].tokens_per_day == 0
    assert (limits.price_per_1k_prompt, limits.currency, limits.priced) == (0.25, "EUR", True)


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"tokens_per_day": -1}, ("limits.tokens_per_day", "greater than or equal to 0")),
        ({"tokens_per_room_day": -5}, ("limits.tokens_per_room_day", "greater than or equal")),
        (
            {"roles": {"boss": {"tokens_per_day": 5}}},
            ("limits.roles", "unknown role 'boss': use guest, user or admin"),
        ),
        (
            {"roles": {"user": {"tokens_per_day": -2}}},
            ("limits.roles.user.tokens_per_day", "greater than or equal to 0"),
        ),
        ({"roles": {"admin": {}}}, ("limits.roles.admin.tokens_per_day", "required")),
        ({"groups": {" ": {"tokens_per_day": 1}}}, ("limits.groups", "must not be empty")),
        ({"price_per_1k_completion": -0.1}, ("limits.price_per_1k_completion", "greater")),
    ],
)
def test_bad_limits_are_named_in_one_line(
    limits: dict[str, object], problem: tuple[str, str]
) -> None:
    raw = {"nextcloud": {"url": "https://x", "bot_secret": SECRET}, "limits": limits}
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    [(field, reason)] = info.value.problems
    assert field == problem[0]
    assert problem[1] in reason
    assert "\n" not in info.value.one_line()


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml", {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[server\nport = 1"), {})


def test_p06_storage_url_selects_postgres_and_its_password_is_a_secret(tmp_path: Path) -> None:
    (tmp_path / "db.pw").write_text("pg-Heron-8812\n")
    text = MINIMAL + (
        '[storage]\nurl = "postgresql://talkbot@db.example.com/talkbot"\n'
        f'password_file = "{tmp_path / "db.pw"}"\n'
    )
    settings = load_settings(write(tmp_path, text), {})
    assert settings.storage.backend == "postgres"
    assert settings.storage.password.get_secret_value() == "pg-Heron-8812"
    assert "pg-Heron-8812" in settings.secret_values()
    assert "pg-Heron-8812" not in repr(settings)
    assert tmp_path / "db.pw" in settings.source_files  # out of the file tools' reach
    inline = settings_from_mapping(
        {
            "nextcloud": {"url": "https://cloud.example.com", "bot_secret": SECRET},
            "storage": {"url": "postgresql://talkbot:pg-Wren-31@db/talkbot?sslmode=require"},
        },
        {},
    )
    assert "pg-Wren-31" in inline.secret_values()
    assert inline.storage.location == "postgresql://db/talkbot"
    assert load_settings(write(tmp_path, MINIMAL), {}).storage.backend == "sqlite"


@pytest.mark.parametrize(
    ("storage", "reason"),
    [
        ({"url": "mysql://db/talkbot"}, "must be a PostgreSQL URL"),
        ({"url": "postgresql://db"}, "must name the database"),
        ({"password": "pw"}, "password_file is for the PostgreSQL store: set url too"),
        (
            {"url": "postgresql://u:pw@db/talkbot", "password": "pw2"},
            "the password is in url and in password_file: keep one",
        ),
    ],
)
def test_bad_storage_is_explained_without_the_password(
    storage: dict[str, str], reason: str
) -> None:
    data = {"nextcloud": {"url": "https://cloud.example.com", "bot_secret": SECRET}}
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({**data, "storage": storage}, {})
    assert reason in str(refused.value)
    assert "storage" in str(refused.value)
    assert "pw2" not in str(refused.value)
