"""deploy/ and systemd/: the unit, the install script, the example config, the proxies."""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from bot import __version__
from bot.cli import EXIT_CONFIG, command_parser
from bot.config import PLACEHOLDER_SECRET, ServerSettings, Settings, ToolPolicy, load_settings
from bot.errors import ConfigError
from bot.lifecycle import STOP_DEADLINE_S
from bot.runtime import EXIT_RESTART

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "talkbot.service"
SOCKET_UNIT = REPO / "systemd" / "talkbot.socket"
EXAMPLE = REPO / "deploy" / "talkbot.example.toml"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order; keys may repeat."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str, section: str = "Service", unit: Path = UNIT) -> list[str]:
    return [v for s, k, v in unit_entries(unit.read_text()) if (s, k) == (section, key)]


def the(key: str, section: str = "Service", unit: Path = UNIT) -> str:
    values = unit_values(key, section, unit)
    assert len(values) == 1, f"{key}= appears {len(values)} times"
    return values[0]


# -- the unit ------------------------------------------------------------------------


def test_unit_is_a_notify_service_with_a_watchdog_and_the_bots_exit_codes() -> None:
    assert the("Type") == "notify"
    assert the("NotifyAccess") == "main"
    assert the("WatchdogSec") == "30"
    assert the("Restart") == "on-failure"  # bot_restart exits EXIT_RESTART: a "failure"
    assert EXIT_RESTART != 0
    assert the("RestartPreventExitStatus").split() == [str(EXIT_CONFIG)]
    assert str(EXIT_RESTART) not in " ".join(unit_values("SuccessExitStatus"))
    assert float(the("TimeoutStopSec")) > STOP_DEADLINE_S
    assert the("StartLimitBurst", "Unit")
    assert the("StartLimitIntervalSec", "Unit")
    assert the("ExecStart") == (
        "/opt/talkbot/venv/bin/talkbot serve --config /etc/talkbot/talkbot.toml"
    )


def test_unit_hands_secrets_in_as_credentials_and_keeps_state_in_its_state_directory() -> None:
    assert the("StateDirectory") == "talkbot"
    assert set(unit_values("LoadCredential")) == {
        "bot_secret:/etc/talkbot/bot_secret",
        "api_key:/etc/talkbot/api_key",
    }
    environment = dict(v.split("=", 1) for v in unit_values("Environment"))
    assert environment == {
        "TALKBOT_STORAGE__PATH": "%S/talkbot/talkbot.sqlite3",
        "TALKBOT_NEXTCLOUD__BOT_SECRET_FILE": "%d/bot_secret",
        "TALKBOT_LLM__API_KEY_FILE": "%d/api_key",
    }


def test_unit_is_hardened() -> None:
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    assert {key: the(key) for key in expected} == expected
    assert the("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "@system-service" in unit_values("SystemCallFilter")
    assert the("User") != "root"


def test_r16_the_webhook_port_is_a_socket_unit_that_outlives_restarts_of_the_service() -> None:
    """talkbot.socket holds the port the daemon would bind by default; the service needs it
    and starts after it, so `systemctl restart talkbot` leaves the socket (and the
    webhooks queued on it) alone."""
    defaults = ServerSettings()
    assert the("ListenStream", "Socket", SOCKET_UNIT) == f"{defaults.host}:{defaults.port}"
    assert the("Accept", "Socket", SOCKET_UNIT) == "no"  # one daemon accepts on it itself
    assert int(the("Backlog", "Socket", SOCKET_UNIT)) >= 1024
    assert unit_values("Service", "Socket", SOCKET_UNIT) == []  # talkbot.service, by name
    assert SOCKET_UNIT.stem == UNIT.stem
    assert "talkbot.socket" in the("Requires", "Unit").split()
    assert "talkbot.socket" in " ".join(unit_values("After", "Unit")).split()
    assert the("WantedBy", "Install", SOCKET_UNIT) == "sockets.target"
    assert "[server]" in SOCKET_UNIT.read_text()  # says to keep the two in step


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _unit_with_an_existing_binary(tmp_path)
    result = _analyze("verify", str(unit), str(unit.with_suffix(".socket")))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # not even a warning (bad specifiers are warnings)


@needs_systemd_analyze
def test_unit_rates_well_in_systemd_analyze_security(tmp_path: Path) -> None:
    unit = _unit_with_an_existing_binary(tmp_path)
    result = _analyze("security", "--offline=true", str(unit))
    if "--offline" in result.stderr:
        pytest.skip("this systemd-analyze cannot rate a unit file offline (needs systemd 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0  # README: 1.1 "OK" on systemd 252


def _unit_with_an_existing_binary(tmp_path: Path) -> Path:
    """verify checks that ExecStart's program exists: point it at one that does."""
    prefix = tmp_path / "opt"
    (prefix / "venv" / "bin").mkdir(parents=True)
    program = prefix / "venv" / "bin" / "talkbot"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "talkbot.service"
    unit.write_text(UNIT.read_text().replace("/opt/talkbot", str(prefix)))
    shutil.copy(SOCKET_UNIT, tmp_path / SOCKET_UNIT.name)  # the service Requires= it
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(  # noqa: S603 - a fixed program with test-made arguments
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


# -- the install script --------------------------------------------------------------


def build_wheel(directory: Path) -> Path:
    """A wheel of this checkout's bot package, made without a build backend.

    Tests stay offline, and building the project with setuptools would need it from the
    network; the script installs whatever PACKAGE names, so a plain wheel tests it fully.
    """
    dist = f"talkbot-{__version__}.dist-info"
    files: dict[str, bytes] = {
        str(path.relative_to(REPO)): path.read_bytes()
        for path in sorted((REPO / "bot").rglob("*.py"))
    }
    files[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: talkbot\nVersion: {__version__}\n".encode()
    )
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
    files[f"{dist}/WHEEL"] += b"Tag: py3-none-any\n"
    files[f"{dist}/entry_points.txt"] = b"[console_scripts]\ntalkbot = bot.cli:main\n"
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    wheel = directory / f"talkbot-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def run_install(tmp_path: Path, wheel: Path, **extra: str) -> str:
    env = {
        **os.environ,
        "PREFIX": str(tmp_path / "opt"),
        "CONFDIR": str(tmp_path / "etc"),
        "UNITDIR": str(tmp_path / "units"),
        "STATEDIR": str(tmp_path / "state"),
        "PYTHON": sys.executable,
        "PACKAGE": str(wheel),
        "PIP_OPTS": "--no-index --no-deps",
        "SKIP_SYSTEMCTL": "1",
        **extra,
    }
    result = subprocess.run(  # noqa: S603 - our own script
        ["/bin/sh", str(REPO / "deploy" / "install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_script_sets_up_everything_once_and_never_overwrites_config(
    tmp_path: Path,
) -> None:
    wheel = build_wheel(tmp_path)
    first = run_install(tmp_path, wheel)
    prefix, etc, unit = tmp_path / "opt", tmp_path / "etc", tmp_path / "units" / "talkbot.service"
    assert "venv" in first
    assert (prefix / "venv" / "bin" / "talkbot").exists()
    config, secret, api_key = etc / "talkbot.toml", etc / "bot_secret", etc / "api_key"
    assert (mode(config), mode(secret), mode(api_key)) == (0o640, 0o600, 0o600)
    assert re.fullmatch(r"[0-9a-f]{64}\n", secret.read_text())
    assert api_key.read_text() == ""
    rendered = unit.read_text()
    assert f"ExecStart={prefix}/venv/bin/talkbot serve --config {etc}/talkbot.toml" in rendered
    assert f"LoadCredential=bot_secret:{etc}/bot_secret" in rendered
    socket_unit = unit.with_suffix(".socket")
    assert socket_unit.read_text() == SOCKET_UNIT.read_text().replace("/etc/talkbot", str(etc))
    assert "talkbot.socket: installed" in first

    settings = load_settings(config, {})  # the installed config is valid as it stands
    assert settings.nextcloud.bot_secret.get_secret_value() == secret.read_text().strip()
    assert settings.storage.path == tmp_path / "state" / "talkbot.sqlite3"

    config.write_text(config.read_text() + "# edited by the admin\n")
    unit_mtime, secret_text = unit.stat().st_mtime_ns, secret.read_text()
    socket_mtime = socket_unit.stat().st_mtime_ns
    second = run_install(tmp_path, wheel)
    assert f"config {etc}/talkbot.toml: kept" in second
    assert config.read_text().endswith("# edited by the admin\n")
    assert secret.read_text() == secret_text
    assert unit.stat().st_mtime_ns == unit_mtime
    assert socket_unit.stat().st_mtime_ns == socket_mtime
    assert "talkbot.service: unchanged" in second
    assert "talkbot.socket: unchanged" in second
    if SYSTEMD_ANALYZE is not None:
        result = _analyze("verify", str(unit), str(socket_unit))
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == ""


def fake_system_tools(directory: Path, calls: Path) -> Path:
    """systemctl (its calls recorded; `is-active` answers from $FAKE_ACTIVE), and id,
    useradd and chown that pretend to be root: what the script does to a real system."""
    directory.mkdir()
    scripts = {
        "systemctl": f'echo "$*" >>{calls}\n'
        'case "$1" in is-active) exit "${FAKE_ACTIVE:-3}" ;; esac\n',
        "id": "echo 0\n",
        "useradd": "",
        "chown": "",
    }
    for name, body in scripts.items():
        tool = directory / name
        tool.write_text(f"#!/bin/sh\n{body}exit 0\n")
        tool.chmod(0o755)
    return directory


def test_r16_install_enables_the_socket_and_restarts_only_the_service_once_it_exists(
    tmp_path: Path,
) -> None:
    """Upgrades restart talkbot.service alone, so the socket keeps the webhooks queued;
    the first upgrade to socket activation (the old daemon holds the port) stops the
    service before the socket can take the port."""
    wheel = build_wheel(tmp_path)
    calls = tmp_path / "systemctl.calls"
    tools = fake_system_tools(tmp_path / "bin", calls)
    system = {"SKIP_SYSTEMCTL": "0", "PATH": f"{tools}:{os.environ['PATH']}"}

    def systemctl_calls(**env: str) -> list[str]:
        calls.write_text("")
        run_install(tmp_path, wheel, **system, **env)
        return calls.read_text().splitlines()

    assert systemctl_calls() == [  # a first install: nothing runs yet
        "daemon-reload",
        "enable --quiet talkbot.socket",
        "is-active --quiet talkbot.service",
        "try-restart talkbot.socket",
    ]
    assert systemctl_calls(FAKE_ACTIVE="0") == [  # an upgrade, the service running
        "enable --quiet talkbot.socket",
        "try-restart talkbot.service",
    ]
    (tmp_path / "units" / "talkbot.socket").unlink()  # installed before socket activation
    assert systemctl_calls(FAKE_ACTIVE="0") == [
        "daemon-reload",
        "enable --quiet talkbot.socket",
        "is-active --quiet talkbot.service",
        "stop talkbot.service talkbot.socket",
        "start talkbot.socket talkbot.service",
    ]


# -- the example config --------------------------------------------------------------


def documented_keys(text: str) -> set[str]:
    """Dotted keys the example shows, active or in a comment (``# key = ...``)."""
    keys: set[str] = set()
    table = ""
    for raw in text.splitlines():
        line = raw.lstrip("#").strip()
        if header := re.fullmatch(r"\[\[?([a-z_.<>]+)\]\]?(\s+#.*)?", line):
            table = header.group(1)
        elif key := re.match(r"([a-z_][a-z0-9_]*)\s*=", line):
            keys.add(f"{table}.{key.group(1)}" if table else key.group(1))
    return keys


def model_keys(model: type[BaseModel], prefix: str) -> set[str]:
    """Dotted keys of ``model``; a table of tables by name (``[limits.roles.<role>]``)
    shows its keys under a placeholder: the singular of the field's name in <>."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        inner = _model_of(field.annotation)
        if inner is not None:
            table = f"{name}.<{name.removesuffix('s')}>" if _is_dict(field.annotation) else name
            keys |= model_keys(inner, f"{prefix}{table}.")
        elif not (issubclass(model, ToolPolicy) and name in ToolPolicy.model_fields):
            keys.add(f"{prefix}{name}")
    return keys


def _is_dict(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is dict


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def test_example_config_documents_every_config_key() -> None:
    text = EXAMPLE.read_text()
    shown = documented_keys(text)
    wanted = model_keys(Settings, "") | {
        "nextcloud.bot_secret_file",
        "nextcloud.app_password_file",
        "llm.api_key_file",
        "storage.password_file",
    }
    assert sorted(wanted - shown) == []
    policies = {key.rsplit(".", 1)[1] for key in shown if key.startswith("tools.bot_restart.")}
    assert policies == set(ToolPolicy.model_fields)  # the per-tool policy keys, once


def test_example_config_is_valid_with_a_real_secret_and_listens_on_loopback() -> None:
    settings = load_settings(EXAMPLE, {"TALKBOT_NEXTCLOUD__BOT_SECRET": "f" * 64})
    assert settings.server == ServerSettings()  # it shows the defaults
    assert settings.server.host == "127.0.0.1"


def test_the_example_placeholder_secret_is_refused_wherever_it_comes_from(
    tmp_path: Path,
) -> None:
    assert tomllib.loads(EXAMPLE.read_text())["nextcloud"]["bot_secret"] == PLACEHOLDER_SECRET
    secret_file = tmp_path / "bot_secret"
    secret_file.write_text(PLACEHOLDER_SECRET + "\n")
    for environ in (
        {},
        {"TALKBOT_NEXTCLOUD__BOT_SECRET": PLACEHOLDER_SECRET},
        {"TALKBOT_NEXTCLOUD__BOT_SECRET_FILE": str(secret_file)},
    ):
        with pytest.raises(ConfigError) as refused:
            load_settings(EXAMPLE, environ)
        assert refused.value.problems == [
            (
                "nextcloud.bot_secret",
                "is the placeholder from the example config: "
                "generate one with `openssl rand -hex 32`",
            )
        ]


# -- reverse proxies and the Nextcloud guide -----------------------------------------


def test_nginx_snippet_limits_the_body_and_times_out_slow_clients() -> None:
    text = (REPO / "deploy" / "nginx.conf").read_text()
    limit = ServerSettings().max_body_bytes
    assert re.search(rf"client_max_body_size\s+{limit // 1024 // 1024}m;", text)
    for directive in ("client_header_timeout", "client_body_timeout", "proxy_read_timeout"):
        seconds = re.search(rf"{directive}\s+(\d+)s;", text)
        assert seconds, directive
        assert int(seconds.group(1)) <= 10  # Talk waits 5 s; a slow client is cut off
    assert "proxy_pass http://127.0.0.1:8585" in text
    assert "location = /webhook" in text


def test_caddy_snippet_limits_the_body_and_times_out_slow_clients() -> None:
    text = (REPO / "deploy" / "Caddyfile").read_text()
    assert re.search(r"request_body\s*{\s*max_size\s+1MB\s*}", text)
    assert re.search(r"read_header\s+\d+s", text)
    assert re.search(r"read_body\s+\d+s", text)
    assert "reverse_proxy 127.0.0.1:8585" in text


def test_every_documented_occ_install_uses_repeated_feature_flags() -> None:
    """``-f webhook,response`` is not split: Talk falls back to its default features
    (webhook and response), so ``reaction`` would be silently lost."""
    documents = [REPO / "deploy" / "NEXTCLOUD.md", REPO / "README.md"]
    lines = [
        line
        for document in documents
        for line in document.read_text().replace("\\\n", " ").splitlines()
        if "talk:bot:install" in line and " -f" in line
    ]
    assert lines
    for line in lines:
        assert re.search(r"-f webhook -f response -f reaction", line), line
        assert not re.search(r"-f \w+,", line), line


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_the_commands_table_shows_every_option_of_every_command() -> None:
    table = readme_section("Commands")
    rows = {
        match.group(1): line
        for line in table.splitlines()
        if (match := re.match(r"\| `talkbot ([a-z-]+)", line))
    }
    subcommands = next(
        action
        for action in command_parser()._actions  # argparse keeps them here
        if isinstance(action, argparse._SubParsersAction)
    )
    assert set(rows) == set(subcommands.choices)
    for name, parser in subcommands.choices.items():
        options = {opt for action in parser._actions for opt in action.option_strings}
        for option in options - {"-h", "--help"}:
            assert option in rows[name], f"talkbot {name} {option} is not in the README table"
    assert "--occ" in (REPO / "deploy" / "NEXTCLOUD.md").read_text()


def test_the_nextcloud_guide_says_what_a_real_talk_does() -> None:
    guide = (REPO / "deploy" / "NEXTCLOUD.md").read_text()
    register = readme_section("Register the bot in Nextcloud")
    for text in (guide, register):
        # occ talk:bot:install prints "Bot installed" and no id; talk:bot:list shows it.
        assert "talk:bot:list" in text
        assert not re.search(r"Bot installed`? and the( new)? id", text)
        # A comma list falls back to Talk's default features; it is not a featureless bot.
        assert "no features" not in text
        assert "does nothing" not in text
    assert "default features" in register
    assert "default features" in guide
    # Talk 21 records no delivery failure in talk:bot:list -v: troubleshoot elsewhere.
    assert not re.search(r"talk:bot:list -v`?[^.]*\bshows?\b[^.]*error", guide)
    assert not re.search(r"errors? in `?(sudo -u www-data php occ )?talk:bot:list -v", guide)
    assert "journalctl -u talkbot" in guide
    assert "last_webhook_at" in guide
    assert "nextcloud.log" in guide
    # event.routed of a message the bot ignores is logged at debug level only.
    if "event.routed" in guide:
        assert "LOG_LEVEL=debug" in guide


@pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("openssl") is None,
    reason="nginx or openssl is not installed",
)
def test_nginx_snippet_passes_nginx_t(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(  # noqa: S603 - a throwaway self-signed certificate for nginx -t
        [
            shutil.which("openssl") or "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bot.example.com",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    site = (REPO / "deploy" / "nginx.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/bot.example.com/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/bot.example.com/privkey.pem", str(key))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(  # noqa: S603 - nginx's own config test
        [
            shutil.which("nginx") or "nginx",
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")
def test_caddy_snippet_passes_caddy_validate(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603 - caddy's own config check
        [
            shutil.which("caddy") or "caddy",
            "validate",
            "--adapter",
            "caddyfile",
            "--config",
            str(REPO / "deploy" / "Caddyfile"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={
            **os.environ,
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr
    assert "Valid configuration" in result.stdout + result.stderr
