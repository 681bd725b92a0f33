"""The command line: ``check`` (what ``serve`` checks, the model probe), ``nextcloud-setup``
and ``send``, as a person at a shell runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot import __version__
from bot.cli import EXIT_CONFIG, main
from bot.commands.check import probe_models
from bot.config import PLACEHOLDER_SECRET, LLMSettings, ScheduleSettings, load_settings
from tests.fakes.llm_server import FakeLLM, closed_port_url
from tests.fakes.talk_server import FakeTalk
from tests.harness import (
    ADMIN_ROOM,
    API_KEY,
    SECRET,
    base_config,
    create_event,
    free_port,
    merge,
    running_daemon,
)
from tests.test_ops_e2e import write_config
from tests.test_process import serve, write_toml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "talkbot.example.toml"

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
    data["llm"]["api_key"] = ""  # the URL's user:password is the credential
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


def test_nextcloud_setup_never_prints_the_example_placeholder_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TALKBOT_NEXTCLOUD__BOT_SECRET", raising=False)
    config = example_copy(tmp_path)
    assert main(["nextcloud-setup", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert PLACEHOLDER_SECRET not in out
    assert "placeholder" in out  # says why it offers a fresh one
    secret = occ_line(out, "talk:bot:install")[7]
    assert re.fullmatch(r"[0-9a-f]{64}", secret)


# -- check refuses what serve refuses ------------------------------------------------


def example_copy(tmp_path: Path, **replace: str) -> Path:
    """deploy/talkbot.example.toml as a first-time admin copies it, with ``replace``d lines."""
    text = EXAMPLE.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "talkbot.toml"
    config.write_text(text)
    return config


WEEKDAYS = {"id": "standup", "room": "grouproom1", "message": "Stand-up in 5 minutes"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        pytest.param(
            {"schedules": [{**WEEKDAYS, "cron": "0 9 * * MON-FRY"}]},
            "schedules[0].cron",
            id="weekday_typo",
        ),
        pytest.param(
            {"schedules": [{**WEEKDAYS, "cron": "61 9 * * 1-5"}]},
            "schedules[0].cron",
            id="minute_61",
        ),
        pytest.param(
            {"tools": {"modules": ["talkbot_tests_no_such_module"]}},
            "tools.modules",
            id="module_not_installed",
        ),
    ],
)
async def test_check_refuses_every_config_serve_refuses(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, extra: dict[str, Any], field: str
) -> None:
    data = merge(config_data(tmp_path, talk, llm), extra)
    with socket.socket() as busy:  # the port is taken: serve must refuse the config first
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        data["server"]["port"] = busy.getsockname()[1]
        config = tmp_path / "talkbot.toml"
        write_toml(config, data)
        serve_code, _out, serve_err = await run_cli("serve", "--config", str(config))
    check_code, check_out, check_err = await run_cli("check", "--offline", "--config", str(config))
    assert (serve_code, check_code) == (EXIT_CONFIG, 1)
    assert f"invalid config: {field}: " in serve_err
    assert "cannot listen" not in serve_err  # refused before it binds
    assert f"  {field}: " in check_err
    assert "OK" not in check_out


def test_check_names_every_schedule_and_module_problem_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "talkbot.toml"
    config.write_text(
        f'[nextcloud]\nurl = "https://cloud.test"\nbot_secret = "{SECRET}"\n'
        '[tools]\nmodules = ["talkbot_tests_no_such_module"]\n'
        '[[schedules]]\nid = "a"\nroom = "grouproom1"\ncron = "0 25 * * *"\nmessage = "m"\n'
        '[[schedules]]\nid = "b"\nroom = "grouproom1"\ncron = "0 9 * * 1-5"\nmessage = "m"\n'
        '[[schedules]]\nid = "c"\nroom = "grouproom1"\ncron = "0 9 32 * *"\nmessage = "m"\n'
    )
    assert main(["check", "--offline", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "  schedules[0].cron: the hour field (0-23) is not valid: '25'" in err
    assert "  schedules[2].cron: the day-of-month field (1-31) is not valid: '32'" in err
    assert "  tools.modules: talkbot_tests_no_such_module: module not found" in err


async def test_reload_refuses_a_schedule_serve_would_refuse(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm) as daemon:
        broken = ScheduleSettings.model_validate({**WEEKDAYS, "cron": "61 9 * * 1-5"})
        new = daemon.settings.model_copy(update={"schedules": (broken,)})
        daemon.runtime.load_settings = lambda: new
        [answer] = await daemon.say(create_event("!reload", sender="root", room=ADMIN_ROOM))
        assert answer.startswith("Config not reloaded, the running one stays.")
        assert "schedules[0].cron: the minute field (0-59) is not valid: '61'" in answer
        assert daemon.runtime.settings.schedules == ()  # nothing half-applied


# -- the example config is not a real one --------------------------------------------


def test_check_refuses_the_example_placeholder_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TALKBOT_NEXTCLOUD__BOT_SECRET", raising=False)
    assert main(["check", "--offline", "--config", str(example_copy(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert (
        "  nextcloud.bot_secret: is the placeholder from the example config: "
        "generate one with `openssl rand -hex 32`"
    ) in err
    assert PLACEHOLDER_SECRET not in err


def warning_lines(out: str) -> dict[str, str]:
    """``  warning: FIELD: REASON`` lines of check's report, by field."""
    found = re.findall(r"^  warning: ([\w.\[\]]+): (.+)$", out, re.MULTILINE)
    return dict(found)


def test_check_warns_about_what_a_first_time_admin_left_as_in_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "srv" / "files"
    config = example_copy(tmp_path, **{'"/srv/talkbot/files"': f'"{missing}"'})
    monkeypatch.setenv("TALKBOT_NEXTCLOUD__BOT_SECRET", SECRET)  # as LoadCredential= does
    assert main(["check", "--offline", "--config", str(config)]) == 0  # warnings only
    out = capsys.readouterr().out
    warnings = warning_lines(out)
    assert set(warnings) == {"nextcloud.url", "access.admins", "tools.files.root"}
    assert "cloud.example.com" in warnings["nextcloud.url"]
    assert f"{missing} does not exist" in warnings["tools.files.root"]


@pytest.mark.parametrize(
    ("access", "field"),
    [
        pytest.param({"admins": ["alice"]}, "access.admin_room", id="admins_without_a_room"),
        pytest.param({"admin_room": "adminroom1"}, "access.admins", id="a_room_without_admins"),
    ],
)
def test_check_warns_about_half_an_admin_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], access: dict[str, Any], field: str
) -> None:
    (tmp_path / "files").mkdir()
    data = {
        "nextcloud": {"url": "https://cloud.test", "bot_secret": SECRET},
        "access": access,
        "tools": {"files": {"root": str(tmp_path / "files")}},
    }
    config = write_config(tmp_path, data)
    assert main(["check", "--offline", "--config", str(config)]) == 0
    assert set(warning_lines(capsys.readouterr().out)) == {field}


async def test_serve_logs_each_warning_when_it_starts(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    data = config_data(tmp_path, talk, llm)
    data["server"]["port"] = free_port()
    data["server"]["public_url"] = "https://bot.example.org/webhook"
    del data["access"]["admin_room"]
    log = tmp_path / "serve.log"
    async with serve(write_config(tmp_path, data), log=log):
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    warnings = {line["field"]: line for line in lines if line["event"] == "config.warning"}
    assert set(warnings) == {"server.public_url", "access.admin_room", "tools.files.root"}
    assert all(line["level"] == "warning" for line in warnings.values())


# -- send ----------------------------------------------------------------------------


def send_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "talkbot.toml"
    config.write_text(f'[nextcloud]\nurl = "{url}"\nbot_secret = "{SECRET}"\n')
    return config


def test_send_says_it_cannot_connect_and_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = closed_port_url().removesuffix("/v1")
    config = send_config(tmp_path, url)
    assert main(["send", "--config", str(config), "--room", "grouproom1", "hello"]) == 1
    err = capsys.readouterr().err
    assert f"talkbot: cannot reach Nextcloud at {url}: the connection was refused" in err
    assert "refused the message" not in err


def test_send_says_when_the_host_name_does_not_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # .invalid never resolves (RFC 6761); answer that here so no DNS query leaves the host.
    real_getaddrinfo, asked = socket.getaddrinfo, []

    def no_such_name(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".invalid"):
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    config = send_config(tmp_path, "https://cloud.talkbot.invalid")
    assert main(["send", "--config", str(config), "--room", "grouproom1", "hello"]) == 1
    err = capsys.readouterr().err
    assert asked  # the name was looked up, and only here
    assert (
        "talkbot: cannot reach Nextcloud at https://cloud.talkbot.invalid: "
        "the host name does not resolve (DNS)"
    ) in err


async def test_send_explains_a_401_with_its_two_usual_causes(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    talk.set_rooms({"otherroom"})  # the bot is not enabled in grouproom1
    config = write_config(tmp_path, config_data(tmp_path, talk, llm))
    code, _out, err = await run_cli(
        "send", "--config", str(config), "--room", "grouproom1", "hello"
    )
    assert code == 1
    assert f"Nextcloud at {talk.url} answered 401" in err
    assert "`occ talk:bot:setup BOT_ID grouproom1`" in err
    assert "`occ talk:bot:install`" in err
    assert talk.messages == []
    assert SECRET not in err
    assert talk.requests[-1].headers["User-Agent"] == f"talkbot/{__version__}"


async def test_send_says_a_post_without_an_answer_may_have_been_posted(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    talk.drop_after_commit_next()  # Talk stores the message, the answer never arrives
    config = write_config(tmp_path, config_data(tmp_path, talk, llm))
    code, _out, err = await run_cli(
        "send", "--config", str(config), "--room", "grouproom1", "hello"
    )
    assert code == 1
    assert "the message may still have been posted; check the room before sending again" in err
    assert talk.texts() == ["hello"]  # it was, once


# -- output into a closed pipe -------------------------------------------------------


def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    config = send_config(tmp_path, "https://cloud.test")
    command = [sys.executable, "-m", "bot", "nextcloud-setup", "--config", str(config)]
    piped = subprocess.run(  # noqa: S602 - the shell pipeline is what the user ran
        f"{shlex.join(command)} | head -1", shell=True, capture_output=True, timeout=30, check=False
    )
    assert piped.stdout.decode().startswith("# ")
    assert piped.stderr == b""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write fails
    try:
        closed = subprocess.run(  # noqa: S603 - our own interpreter and module
            command, stdout=write_end, stderr=subprocess.PIPE, timeout=30, check=False
        )
    finally:
        os.close(write_end)
    assert closed.stderr == b""
    assert closed.returncode == 141  # 128 + SIGPIPE, as for a tool the signal ended
