"""The command line: ``check`` (with the model probe) and ``nextcloud-setup``."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.cli import main, probe_models
from bot.config import LLMSettings, load_settings
from tests.fakes.llm_server import FakeLLM, closed_port_url
from tests.fakes.talk_server import FakeTalk
from tests.harness import API_KEY, SECRET, base_config
from tests.test_ops_e2e import write_config

SHORT_SECRET = "too-short-to-be-a-talk-secret"


async def run_cli(*args: str) -> tuple[int, str, str]:
    """``talkbot ARGS`` in its own process, so the fakes on this loop keep answering."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def config_data(tmp_path: Path, talk: FakeTalk, llm: FakeLLM) -> dict[str, Any]:
    data = base_config(tmp_path, talk, llm, port=8585)
    data["llm"]["model"] = "fake-model"  # the one FakeLLM lists at /v1/models
    return data


# -- check ---------------------------------------------------------------------------


async def test_check_reports_a_reachable_model_and_never_prints_secrets(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = write_config(tmp_path, config_data(tmp_path, talk, llm))
    code, out, err = await run_cli("check", "--config", str(config))
    assert code == 0
    assert "OK" in out
    assert "model endpoint: reachable, model 'fake-model' is available" in out
    probe = llm.requests[-1]
    assert (probe.method, probe.path) == ("GET", "/v1/models")
    assert probe.headers["Authorization"] == f"Bearer {API_KEY}"
    assert SECRET not in out + err
    assert API_KEY not in out + err


async def test_check_with_the_model_down_reports_it_and_still_exits_0(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    data = config_data(tmp_path, talk, llm)
    data["llm"]["base_url"] = closed_port_url()
    code, out, _err = await run_cli("check", "--config", str(write_config(tmp_path, data)))
    assert code == 0
    assert "model endpoint: unreachable" in out


async def test_check_offline_does_not_call_the_model(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = write_config(tmp_path, config_data(tmp_path, talk, llm))
    code, out, _err = await run_cli("check", "--offline", "--config", str(config))
    assert code == 0
    assert "model endpoint" not in out
    assert llm.requests == []


def test_check_does_not_show_credentials_inside_urls(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    data = config_data(tmp_path, talk, llm)
    data["llm"]["base_url"] = "https://bot:hunter2-password@llm.example.com/v1"
    config = write_config(tmp_path, data)
    assert main(["check", "--offline", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "at https://llm.example.com/v1" in out
    assert "hunter2" not in out


def test_check_names_every_bad_field_without_echoing_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[nextcloud]\nurl = "cloud.example.com"\nbot_secret = "{SHORT_SECRET}"\n'
        '[chat]\ntimezone = "Mars/Olympus_Mons"\n'
    )
    assert main(["check", "--config", str(config)]) != 0
    err = capsys.readouterr().err
    for field in ("nextcloud.url", "nextcloud.bot_secret", "chat.timezone"):
        assert field in err
    assert SHORT_SECRET not in err


@pytest.fixture
async def refusing_models() -> AsyncIterator[str]:
    """A model server that refuses every key at /v1/models."""

    async def refuse(_request: web.Request) -> web.Response:
        return web.json_response({"error": "invalid api key"}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_the_probe_tells_a_refused_key_apart(refusing_models: str) -> None:
    settings = LLMSettings(base_url=refusing_models, api_key="sk-wrong-key-0123456789")
    assert await probe_models(settings) == "reachable, but it refused the API key (HTTP 401)"


async def test_the_probe_names_a_model_the_server_does_not_have(llm: FakeLLM) -> None:
    result = await probe_models(LLMSettings(base_url=llm.base_url, model="qwen3:8b"))
    assert result == "reachable, but model 'qwen3:8b' is not in its list of 1"
    assert "Authorization" not in llm.requests[-1].headers  # no key configured, none sent


# -- nextcloud-setup -----------------------------------------------------------------


def occ_line(out: str, command: str) -> list[str]:
    line = next(line for line in out.splitlines() if f" {command} " in line)
    words = shlex.split(line)
    return words[words.index(command) + 1 :]


def test_nextcloud_setup_prints_a_fresh_valid_secret_when_none_is_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "talkbot.toml"
    config.write_text(
        '[server]\npublic_url = "https://bot.example.com/webhook"\n'
        '[nextcloud]\nurl = "https://cloud.example.com"\n'
        '[access]\nadmin_room = "adminroom1"\n'
    )
    assert main(["nextcloud-setup", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    args = occ_line(out, "talk:bot:install")
    assert args[:6] == ["-f", "webhook", "-f", "response", "-f", "reaction"]
    name, secret, url, _description = args[6:]
    assert (name, url) == ("talkbot", "https://bot.example.com/webhook")
    assert re.fullmatch(r"[0-9a-f]{64}", secret)  # 40-128 chars, never read as an option
    assert f"#   {secret}" in out  # shown for the config too
    settings = load_settings(config, {"TALKBOT_NEXTCLOUD__BOT_SECRET": secret})
    assert settings.nextcloud.bot_secret.get_secret_value() == secret
    assert occ_line(out, "talk:bot:setup") == ["BOT_ID", "adminroom1"]
    assert "loopback" not in out


def test_nextcloud_setup_quotes_the_configured_secret_for_the_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = 'it\'s $HOME; a `secret` with "quotes" and spaces 0123456789'
    config = tmp_path / "talkbot.toml"
    config.write_text(
        '[nextcloud]\nurl = "https://cloud.example.com"\n'
        f"bot_secret = '''{secret}'''\n"
        '[chat]\nbot_name = "Team Bot"\n'
    )
    assert main(["nextcloud-setup", "--config", str(config), "--occ", "php occ"]) == 0
    out = capsys.readouterr().out
    assert out.count("php occ talk:bot:install -f webhook -f response -f reaction ") == 1
    args = occ_line(out, "talk:bot:install")
    assert args[6:8] == ["Team Bot", secret]  # the shell hands occ exactly these words
    assert "loopback address" in out  # the default URL, http://127.0.0.1:8585/webhook


def test_nextcloud_setup_warns_about_a_secret_occ_would_read_as_an_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "talkbot.toml"
    config.write_text(f'[nextcloud]\nurl = "https://cloud.example.com"\nbot_secret = "-{SECRET}"\n')
    assert main(["nextcloud-setup", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "starting with '-' as an option" in out
