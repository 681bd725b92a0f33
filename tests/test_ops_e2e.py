"""Operations end to end: /metrics and /readyz, the source allow-list, and the real
``talkbot serve`` process under a stand-in systemd (R12, R15, W15)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import tomllib
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bot.clock import ManualClock
from bot.config import ServerSettings
from tests.fakes.llm_server import FakeLLM, closed_port_url
from tests.fakes.talk_server import FakeTalk
from tests.harness import (
    Daemon,
    base_config,
    dm_event,
    free_port,
    php_json,
    running_daemon,
    signed_headers,
)
from tests.test_process import spawn as spawn_daemon
from tests.test_systemd import bound_notify_socket
from tests.test_systemd import receive as receive_notification

STARTUP_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 20.0
REPO = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers -------------------------------------------------------------------------


def toml_text(data: dict[str, Any]) -> str:
    """A small TOML writer for test configs (tables, strings, numbers, booleans, lists)."""
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        if prefix:
            lines.append(f"[{prefix}]")
        for key, value in values.items():
            if not isinstance(value, dict):
                lines.append(f"{key} = {json.dumps(value)}")
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{prefix}.{key}" if prefix else key, value)

    table("", data)
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == data  # the writer's own guard
    return text


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "talkbot.toml") -> Path:
    path = tmp_path / name
    path.write_text(toml_text(data))
    return path


async def metrics(daemon: Daemon) -> Samples:
    async with daemon.session.get(f"{daemon.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with daemon.session.get(f"{daemon.url}/readyz") as resp:
        return resp.status, await resp.json()


# -- /metrics and /readyz ------------------------------------------------------------


async def test_metrics_change_after_a_turn(daemon: Daemon) -> None:
    before = await metrics(daemon)
    daemon.llm.reply("Hello!")
    assert await daemon.say(dm_event("hi")) == ["Hello!"]
    after = await metrics(daemon)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("talkbot_webhooks_total", type="Create", status="200") == 1
    assert grew("talkbot_turns_total", outcome="reply", role="user") == 1
    assert grew("talkbot_turn_seconds_count") == 1
    assert grew("talkbot_llm_request_seconds_count") == 1
    assert grew("talkbot_talk_sends_total", outcome="ok") == 1
    assert value(after, "talkbot_inbox_backlog") == 0


async def test_every_metric_name_starts_with_talkbot(daemon: Daemon) -> None:
    samples = await metrics(daemon)
    assert samples
    assert all(name.startswith("talkbot_") for name, _ in samples)


async def test_tool_calls_are_counted_by_tool_and_outcome(daemon: Daemon) -> None:
    daemon.llm.call("current_time", {"timezone": "Europe/Berlin"})
    daemon.llm.call("current_time", {"timezone": "Mars/Olympus_Mons"})
    daemon.llm.reply("It is noon in Berlin.")
    assert await daemon.say(dm_event("what time is it in Berlin?")) == ["It is noon in Berlin."]
    samples = await metrics(daemon)
    assert value(samples, "talkbot_tool_calls_total", tool="current_time", outcome="ok") == 1
    assert value(samples, "talkbot_tool_calls_total", tool="current_time", outcome="failed") == 1


async def test_model_errors_are_counted_by_kind(daemon: Daemon) -> None:
    daemon.llm.raw(401, {"error": {"message": "bad key"}})
    texts = await daemon.say(dm_event("hello?"))
    assert len(texts) == 1  # the user gets a notice, not silence
    samples = await metrics(daemon)
    assert value(samples, "talkbot_llm_errors_total", kind="auth") == 1
    assert value(samples, "talkbot_llm_request_seconds_count") == 1
    assert value(samples, "talkbot_turns_total", outcome="gaveup", role="user") == 1


async def test_a_failed_send_shows_in_metrics_and_readyz(daemon: Daemon) -> None:
    daemon.talk.fail_next(401)  # never retried: each 401 feeds Talk's brute-force throttle
    daemon.llm.reply("You will not see this")
    assert await daemon.say(dm_event("hi")) == []
    samples = await metrics(daemon)
    assert value(samples, "talkbot_talk_sends_total", outcome="auth") == 1
    status, body = await readyz(daemon)
    assert status == 200
    assert body["send_failures"] == 1
    assert "401" in body["last_send_error"]
    assert body["last_send_error_at"] is not None


async def test_confirmation_decisions_are_counted_by_outcome(daemon: Daemon) -> None:
    daemon.llm.call("bot_restart", {})
    prompt = await daemon.say(dm_event("restart please", sender="root"))
    assert "bot_restart" in prompt[0]
    await daemon.say(dm_event("no", sender="root"))
    daemon.llm.call("bot_restart", {})
    await daemon.say(dm_event("restart, really", sender="root"))
    daemon.llm.reply("Restarting.")
    assert await daemon.say(dm_event("yes", sender="root")) == ["Restarting."]
    samples = await metrics(daemon)
    assert value(samples, "talkbot_confirmations_total", outcome="denied") == 1
    assert value(samples, "talkbot_confirmations_total", outcome="approved") == 1
    assert value(samples, "talkbot_tool_calls_total", tool="bot_restart", outcome="ok") == 1


async def test_scheduled_runs_are_counted(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, clock: ManualClock
) -> None:
    job = {"id": "tick", "every": "1h", "room": "grouproom1", "message": "tick"}
    async with running_daemon(tmp_path, talk, llm, {"schedules": [job]}, clock) as daemon:
        clock.advance(3600)
        assert await daemon.runtime.running.scheduler.run_due() == {"tick": "done"}
        samples = await metrics(daemon)
    assert value(samples, "talkbot_schedule_runs_total", outcome="delivered") == 1
    assert talk.texts() == ["tick"]


async def test_readyz_reports_store_scheduler_backlog_and_last_webhook(daemon: Daemon) -> None:
    status, body = await readyz(daemon)
    assert status == 200
    assert body["ready"] is True
    assert body["store"] == "open"
    assert body["store_error"] is None  # H04: set while the store cannot commit
    assert body["scheduler"] == "running"
    assert body["inbox_backlog"] == 0
    assert body["last_webhook_at"] is None
    assert body["send_failures"] == 0
    assert body["last_send_error"] is None
    daemon.llm.reply("ok")
    await daemon.say(dm_event("hi"))
    _status, body = await readyz(daemon)
    assert body["last_webhook_at"] == daemon.runtime.clock.now()


async def test_readyz_is_503_when_the_scheduler_is_not_running(daemon: Daemon) -> None:
    await daemon.runtime.running.scheduler.stop()
    status, body = await readyz(daemon)
    assert status == 503
    assert body["ready"] is False
    assert body["scheduler"] == "stopped"


# -- W15: where webhooks may come from -----------------------------------------------


def test_w15_the_default_bind_address_is_loopback(tmp_path: Path) -> None:
    assert ServerSettings().host == "127.0.0.1"
    example = tomllib.loads((REPO / "deploy" / "talkbot.example.toml").read_text())
    assert example["server"]["host"] == "127.0.0.1"


async def test_w15_a_source_outside_allowed_sources_gets_403(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    extra = {"server": {"allowed_sources": ["127.0.0.2/32"]}}
    async with running_daemon(tmp_path, talk, llm, extra) as daemon:
        body = php_json(dm_event("from the wrong place"))
        assert await daemon.post(body) == 403  # this test client connects from 127.0.0.1
        llm.reply("from the proxy, welcome")
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as proxy,
            proxy.post(f"{daemon.url}/webhook", data=body, headers=signed_headers(body)) as resp,
        ):
            assert resp.status == 200
        await daemon.idle()
        samples = await metrics(daemon)
    assert talk.texts() == ["from the proxy, welcome"]
    assert value(samples, "talkbot_webhooks_total", type="unknown", status="403") == 1


# -- the real process ----------------------------------------------------------------


def notify_socket(directory: Path) -> AbstractContextManager[tuple[socket.socket, str]]:
    return bound_notify_socket(directory)


async def receive(sock: socket.socket) -> str:
    return await receive_notification(sock, STARTUP_TIMEOUT_S)


async def spawn(config: Path, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return (await spawn_daemon(config, env=env)).proc


@asynccontextmanager
async def serving(config: Path, env: dict[str, str] | None = None) -> AsyncIterator[Any]:
    proc = await spawn(config, env)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def wait_ok(url: str, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(STARTUP_TIMEOUT_S), aiohttp.ClientSession() as session:
        while True:
            assert proc.returncode is None, "talkbot exited early"
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def exit_of(proc: asyncio.subprocess.Process) -> tuple[int, list[str]]:
    _out, err = await asyncio.wait_for(proc.communicate(), EXIT_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, err.decode().strip().splitlines()


async def test_r15_serve_notifies_systemd_and_starts_with_talk_down(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    port = free_port()
    data = base_config(tmp_path, talk, llm, port=port)
    data["nextcloud"]["url"] = closed_port_url().removesuffix("/v1")  # nobody listens there
    config = write_config(tmp_path, data)
    base = f"http://127.0.0.1:{port}"
    with notify_socket(tmp_path) as (sock, address):
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"}  # a ping every 50 ms
        async with serving(config, env) as proc:
            seen = [await receive(sock)]
            while not any(state.startswith("READY=1") for state in seen):
                seen.append(await receive(sock))
            ready = next(state for state in seen if state.startswith("READY=1"))
            assert f"STATUS=listening on 127.0.0.1:{port}" in ready
            async with (  # READY=1 comes after the socket listens: no retry needed
                aiohttp.ClientSession() as session,
                session.get(f"{base}/healthz") as resp,
            ):
                assert resp.status == 200
            await wait_ok(f"{base}/readyz", proc)
            pings = [state for state in seen if state == "WATCHDOG=1"]
            while len(pings) < 2:
                state = await receive(sock)
                if state == "WATCHDOG=1":
                    pings.append(state)
            proc.send_signal(signal.SIGTERM)
            while (state := await receive(sock)) == "WATCHDOG=1":
                pass
            assert state.startswith("STOPPING=1")
            code, _lines = await exit_of(proc)
    assert code == 0


async def test_r12_a_second_daemon_on_the_same_store_refuses_to_start(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    first_port, second_port = free_port(), free_port()
    while second_port == first_port:  # the kernel may hand out a just-closed port again
        second_port = free_port()
    data = base_config(tmp_path, talk, llm, port=first_port)
    first_config = write_config(tmp_path, data, "first.toml")
    data["server"]["port"] = second_port
    second_config = write_config(tmp_path, data, "second.toml")
    async with serving(first_config) as first:
        await wait_ok(f"http://127.0.0.1:{first_port}/healthz", first)
        code, lines = await exit_of(await spawn(second_config))
        assert first.returncode is None  # the first one keeps running
    assert code != 0
    assert len(lines) == 1
    assert lines[0].startswith("talkbot: ")
    assert "in use by another talkbot process" in lines[0]


async def test_a_port_in_use_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, base_config(tmp_path, talk, llm, port=port))
        code, lines = await exit_of(await spawn(config))
    assert code != 0
    assert lines == [f"talkbot: cannot listen on 127.0.0.1:{port}: Address already in use"]


async def test_an_unreadable_secret_file_is_one_line_and_exit_78(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    data = base_config(tmp_path, talk, llm, port=free_port())
    del data["nextcloud"]["bot_secret"]
    data["nextcloud"]["bot_secret_file"] = str(tmp_path / "no-such-secret")
    code, lines = await exit_of(await spawn(write_config(tmp_path, data)))
    assert code == 78  # EX_CONFIG: the unit's RestartPreventExitStatus stops a restart loop
    assert len(lines) == 1
    assert "nextcloud.bot_secret_file" in lines[0]
    assert "no-such-secret" in lines[0]


async def test_log_level_warning_leaves_out_the_info_lines(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    port = free_port()
    config = write_config(tmp_path, base_config(tmp_path, talk, llm, port=port))
    async with serving(config, {"LOG_LEVEL": "warning"}) as proc:
        await wait_ok(f"http://127.0.0.1:{port}/healthz", proc)
        proc.send_signal(signal.SIGTERM)
        code, lines = await exit_of(proc)
    assert code == 0
    assert [line for line in lines if '"level": "info"' in line] == []


async def test_a_bad_log_level_is_one_line_and_exit_78(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = write_config(tmp_path, base_config(tmp_path, talk, llm, port=free_port()))
    code, lines = await exit_of(await spawn(config, {"LOG_LEVEL": "chatty"}))
    assert code == 78
    assert lines == [
        "talkbot: invalid config: LOG_LEVEL: must be one of debug, info, warning, error"
    ]
