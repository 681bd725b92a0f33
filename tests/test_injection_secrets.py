"""Secrets stay out of the model's reach and out of sight (#13.9, I10).

The model reads whatever the file tools reach and may be told by any text to read it, so a
files root holding the config, a secret file or the store is refused by `check` and
`serve` alike; a password in `[llm] base_url` is never shown and works as Basic auth.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from bot.cli import EXIT_CONFIG, main
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import ADMIN_ROOM, SECRET, base_config, create_event, free_port, running_daemon
from tests.test_ops_e2e import exit_of, spawn, write_config


def config_with_root(tmp_path: Path, talk: FakeTalk, llm: FakeLLM, root: Path) -> Path:
    data = base_config(tmp_path, talk, llm, port=free_port())
    data["tools"]["files"]["root"] = str(root)
    return write_config(tmp_path, data)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("config", id="folder_of_the_config"),
        pytest.param("secret", id="folder_of_a_secret_file"),
        pytest.param("store", id="folder_of_the_store"),
    ],
)
def test_i10_check_refuses_a_files_root_that_holds_a_secret(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    data = base_config(tmp_path, talk, llm)
    shared = tmp_path / "shared"
    shared.mkdir()
    data["tools"]["files"]["root"] = str(shared)
    config_dir = shared if where == "config" else tmp_path
    if where == "secret":
        secret_file = shared / "bot_secret"
        secret_file.write_text(SECRET)
        del data["nextcloud"]["bot_secret"]
        data["nextcloud"]["bot_secret_file"] = str(secret_file)
    if where == "store":
        data["storage"]["path"] = str(shared / "state" / "talkbot.sqlite3")
    config = write_config(config_dir, data)
    assert main(["check", "--offline", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "tools.files.root" in err
    assert "would let the model read it" in err


@pytest.mark.parametrize("root", ["/", "/etc", str(Path.home())])
def test_i10_check_refuses_system_and_home_folders_as_files_root(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, capsys: pytest.CaptureFixture[str], root: str
) -> None:
    config = config_with_root(tmp_path, talk, llm, Path(root))
    assert main(["check", "--offline", "--config", str(config)]) == 1
    assert "system or home folder" in capsys.readouterr().err


async def test_i10_serve_refuses_the_root_that_would_hand_the_model_its_config(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """The attack: root = the config's folder, then `file_read talkbot.toml`. It never starts."""
    config = config_with_root(tmp_path, talk, llm, tmp_path)
    code, lines = await exit_of(await spawn(config))
    assert code == EXIT_CONFIG
    assert len(lines) == 1
    assert "tools.files.root" in lines[0]
    assert SECRET not in lines[0]


async def test_i10_a_password_in_the_model_url_is_never_shown_and_works(
    tmp_path: Path, talk: FakeTalk
) -> None:
    """Before: `!status` printed the URL as written, and every turn crashed in aiohttp."""
    async with FakeLLM() as llm:
        url = llm.base_url.replace("http://", "http://bot:hunter2-pass@")
        extra: dict[str, Any] = {"llm": {"base_url": url, "api_key": ""}}
        async with running_daemon(tmp_path, talk, llm, extra) as daemon:
            status = await daemon.say(
                create_event("!status", sender="root", room=ADMIN_ROOM, room_name="Admins")
            )
            llm.reply("hello through basic auth")
            answer = await daemon.say(create_event("talkbot, hi", sender="alice"))
        assert "hunter2" not in status[0]
        assert llm.base_url in status[0]
        assert answer == ["hello through basic auth"]
        [request] = llm.requests
        expected = base64.b64encode(b"bot:hunter2-pass").decode()
        assert request.headers["Authorization"] == f"Basic {expected}"
