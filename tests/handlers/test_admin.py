"""The admin room end to end: commands answer without the model; others are refused (A11)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from bot.config import load_settings
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import ADMIN_ROOM, Daemon, create_event, dm_event, running_daemon
from tests.test_process import write_toml

log = structlog.get_logger(__name__)


def admin_says(text: str, sender: str = "root") -> dict[str, object]:
    return create_event(text, sender=sender, room=ADMIN_ROOM, room_name="Admins")


async def ask(daemon: Daemon, text: str, sender: str = "root") -> str:
    texts = await daemon.say(admin_says(text, sender))
    assert len(texts) == 1, texts
    return texts[0]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("!help", "!role UID"),
        ("!help logs", "log lines"),
        ("!status", "inbox backlog"),
        ("!roles", "admins (config): root"),
        ("!rooms", "adminroom1"),
        ("!logs 5", "log lines"),
        ("!stauts", "Did you mean `!status`?"),
    ],
)
async def test_admin_commands_answer_without_the_model(
    daemon: Daemon, command: str, expected: str
) -> None:
    log.info("something.happened", room="x")
    assert expected in await ask(daemon, command)
    assert daemon.llm.requests == []


async def test_a11_non_admin_in_the_admin_room_is_refused(daemon: Daemon) -> None:
    answer = await ask(daemon, "!role bob admin", sender="bob")
    assert "admin command" in answer
    assert daemon.llm.requests == []
    assert await daemon.runtime.running.store.role_overrides() == {}


async def test_a11_admin_command_outside_the_admin_room_is_refused(daemon: Daemon) -> None:
    texts = await daemon.say(create_event("!role bob admin", sender="root"))
    assert len(texts) == 1
    assert "admin room" in texts[0]
    assert await daemon.runtime.running.store.role_overrides() == {}
    assert daemon.llm.requests == []


async def test_role_change_takes_effect_and_survives_a_restart(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm) as daemon:
        assert "now has the role **admin**" in await ask(daemon, "!role bob admin")
        llm.reply("hi bob")
        await daemon.say(dm_event("hello", sender="bob", other="root"))
        assert "bot_logs" in llm.requests[-1].tool_names
    async with running_daemon(tmp_path, talk, llm) as daemon:
        llm.reply("hi again")
        await daemon.say(dm_event("hello again", sender="bob", other="root"))
        assert "bot_logs" in llm.requests[-1].tool_names
        assert "back to the config's role (user)" in await ask(daemon, "!role bob default")


async def test_config_admins_cannot_be_demoted_from_chat(daemon: Daemon) -> None:
    assert "in the config file" in await ask(daemon, "!role root none")
    assert daemon.runtime.running.access.role_of("users/root") == "admin"


async def test_role_with_a_bad_role_name_is_explained(daemon: Daemon) -> None:
    assert "Unknown role" in await ask(daemon, "!role bob superuser")


async def test_reload_with_a_broken_file_keeps_the_running_config(
    tmp_path: Path, daemon: Daemon
) -> None:
    config = tmp_path / "reload.toml"
    config.write_text("[chat]\npersona = 'new persona'\n[nextcloud]\nurl = 'nope'\n")
    daemon.runtime.load_settings = lambda: load_settings(config, {})
    answer = await ask(daemon, "!reload")
    assert "not reloaded" in answer
    assert "nextcloud" in answer
    assert daemon.runtime.settings.chat.persona == "You are a helpful assistant for our team."


async def test_reload_applies_a_good_file(tmp_path: Path, daemon: Daemon) -> None:
    data = {
        "nextcloud": {
            "url": daemon.settings.nextcloud.url,
            "bot_secret": daemon.settings.nextcloud.bot_secret.get_secret_value(),
        },
        "llm": {"base_url": daemon.settings.llm.base_url, "model": "other-model"},
        "access": {"admins": ["root"], "admin_room": ADMIN_ROOM},
        "chat": {"persona": "You are terse."},
        "storage": {"path": str(daemon.settings.storage.path)},
    }
    config = tmp_path / "reload.toml"
    write_toml(config, data)
    daemon.runtime.load_settings = lambda: load_settings(config, {})
    assert "Config reloaded." in await ask(daemon, "!reload")
    daemon.llm.reply("ok")
    await daemon.say(dm_event("hi"))
    request = daemon.llm.requests[-1]
    assert request.body["model"] == "other-model"
    assert "You are terse." in request.messages[0]["content"]
