"""The real `talkbot serve` process: kill -9 after the 200, SIGTERM mid-turn (R08, R09, W04)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sqlite3
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bot.crashpoints import ENV as CRASH_ENV
from bot.crashpoints import EXIT_CODE as CRASH_EXIT
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import (
    GROUP,
    base_config,
    create_event,
    dm_event,
    free_port,
    php_json,
    signed_headers,
)

STARTUP_TIMEOUT_S = 20.0


def write_toml(path: Path, data: dict[str, Any]) -> None:
    lines: list[str] = []
    _write_tables(lines, "", data)
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text()) == data  # the test's own guard


def _write_tables(lines: list[str], prefix: str, table: dict[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if prefix:
        lines.append(f"[{prefix}]")
    lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
    for key, value in table.items():
        if isinstance(value, dict):
            _write_tables(lines, f"{prefix}.{key}" if prefix else key, value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # inside a list: [[schedules]] as inline tables
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Process:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url

    async def post(self, body: bytes) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/webhook", data=body, headers=signed_headers(body)) as resp,
        ):
            return resp.status


@asynccontextmanager
async def serve(
    config: Path,
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    fd_limit: int | None = None,
) -> AsyncIterator[Process]:
    daemon = await spawn(config, env=env, log=log, fd_limit=fd_limit)
    proc = daemon.proc
    try:
        await wait_healthy(daemon.url, proc)
        yield daemon
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def spawn(
    config: Path,
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    fd_limit: int | None = None,
) -> Process:
    """Start `talkbot serve` without waiting for it; ``log`` collects its output;
    ``fd_limit`` sets its descriptor limit, soft and hard (what LimitNOFILE= does)."""
    data = tomllib.loads(config.read_text())  # noqa: ASYNC240 - a tiny local file
    url = f"http://127.0.0.1:{data['server']['port']}"
    with contextlib.ExitStack() as files:
        stderr: Any = asyncio.subprocess.PIPE
        if log is not None:
            stderr = files.enter_context(log.open("ab"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "serve",
            "--config",
            str(config),
            stdout=asyncio.subprocess.DEVNULL if log is None else stderr,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=None if fd_limit is None else _limit_fds(fd_limit),
        )
    return Process(proc, url)


def _limit_fds(limit: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


async def wait_healthy(url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            if proc.returncode is not None:
                stderr = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"talkbot exited early: {stderr.decode()}")
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("talkbot did not become ready")


def make_config(tmp_path: Path, talk: FakeTalk, llm: FakeLLM) -> Path:
    config = tmp_path / "talkbot.toml"
    data = base_config(tmp_path, talk, llm, port=free_port())
    data["llm"]["timeout_s"] = 30
    write_toml(config, data)
    return config


async def test_r09_kill_9_after_the_200_still_answers_exactly_once(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = make_config(tmp_path, talk, llm)
    body = php_json(dm_event("talkbot, please answer this even if you crash", message_id=500))
    llm.hang(30)  # the first process is mid-turn when it dies
    async with serve(config) as first:
        assert await first.post(body) == 200
        await llm.wait_for_requests(1)
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
    assert talk.messages == []
    llm.reply("answered after the restart")
    async with serve(config) as second:
        await talk.wait_for_messages(1, timeout=15)
        assert await second.post(body) == 200  # W04: the replay is acknowledged, not answered
        await asyncio.sleep(0)  # let a (wrong) second turn start if it were going to
    assert talk.texts() == ["answered after the restart"]


async def test_r09_killed_before_the_batched_done_the_message_is_redone_and_kept_once(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """kill -9 (at the crash point before_batch_done) after a message that needed no turn
    was handled, before the one statement marking it done committed: the next process
    redoes it, and the room's history holds the message once."""
    config = make_config(tmp_path, talk, llm)
    chatter = php_json(create_event("morning all", message_id=700))  # group room: no turn
    first = await spawn(config, env={CRASH_ENV: "before_batch_done"})
    await wait_healthy(first.url, first.proc)
    assert await first.post(chatter) == 200
    assert await asyncio.wait_for(first.proc.wait(), timeout=20) == CRASH_EXIT
    store = tmp_path / "talkbot.sqlite3"
    assert _history_of(store) == ["700"]  # stored by the act the crash cut short
    async with serve(config):
        for _ in range(200):
            if _status_of(store, 700) == "done":
                break
            await asyncio.sleep(0.05)
    assert _status_of(store, 700) == "done"
    assert _history_of(store) == ["700"]
    assert llm.requests == []
    assert talk.messages == []


def _history_of(store: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT message_id FROM history WHERE room = ? ORDER BY id", (GROUP,)
        ).fetchall()
    return [str(row[0]) for row in rows]


def _status_of(store: Path, message_id: int) -> str | None:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT status FROM inbox WHERE dedupe_key = ?", (f"Create:{GROUP}:{message_id}",)
        ).fetchone()
    return None if row is None else str(row[0])


async def test_r08_sigterm_mid_turn_finishes_the_turn_and_exits_0(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = make_config(tmp_path, talk, llm)
    llm.hang(1.0)
    async with serve(config) as daemon:
        assert await daemon.post(php_json(dm_event("talkbot: slow one", message_id=600))) == 200
        await llm.wait_for_requests(1)
        daemon.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(daemon.proc.wait(), timeout=20)
    assert code == 0
    assert len(talk.messages) == 1


async def test_bad_config_is_one_line_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[nextcloud]\nurl = "https://cloud.example.com"\nbot_secret = "short"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await proc.communicate()
    assert proc.returncode == 78
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert "nextcloud.bot_secret" in lines[0]
    assert "Traceback" not in err.decode()


async def test_r16_webhooks_during_the_stop_drain_are_stored_and_answered_next_time(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """A long turn at SIGTERM: the old process keeps taking webhooks while it finishes it
    (each stored and answered 200 at once), and the next process answers them."""
    config = make_config(tmp_path, talk, llm)
    llm.hang(3.0)
    llm.reply("late but answered")
    async with serve(config) as daemon:
        assert await daemon.post(php_json(dm_event("talkbot: slow one", message_id=610))) == 200
        await llm.wait_for_requests(1)
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # the stop has begun: the turn is draining
        started = asyncio.get_running_loop().time()
        during = php_json(dm_event("talkbot, meanwhile?", message_id=611))
        assert await daemon.post(during) == 200
        assert asyncio.get_running_loop().time() - started < 1.0  # not held by the drain
        assert await asyncio.wait_for(daemon.proc.wait(), timeout=20) == 0
    assert [m.reply_to for m in talk.messages] == [610]  # the slow turn finished
    async with serve(config):
        await talk.wait_for_messages(2, timeout=15)
    assert talk.texts()[1] == "late but answered"
    assert [m.reply_to for m in talk.messages] == [610, 611]
