"""Socket activation: `talkbot serve` on the listening socket systemd holds
(systemd/talkbot.socket), so a restart loses no webhook (R16)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.config import ServerSettings
from bot.errors import TalkbotError
from bot.serving import FIRST_REQUEST_GRACE_S, ConnectionGate, adopt, open_gate
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import base_config, create_event, free_port, php_json, signed_headers
from tests.test_process import write_toml

pytestmark = pytest.mark.timing  # races a wall-clock deadline: run alone (scripts/check)

REPO = Path(__file__).resolve().parents[1]
TALK_TIMEOUT_S = 5.0  # Talk gives a webhook this long and never retries it
PATIENCE_S = 20.0  # what the tests wait for before calling a process stuck
EXIT_TIMEOUT_S = 30.0
ROOMS = ("roomone1", "roomtwo2", "roomthree3")
WEBHOOKS_PER_S = 10
BACKLOG = 1024  # what talkbot.socket asks for
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
# What systemd does for a socket-activated service, done by hand: the socket becomes
# descriptor 3, LISTEN_FDS/LISTEN_PID name it, and exec keeps the pid LISTEN_PID names.
LAUNCHER = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="talkbot.socket")
os.execv(sys.argv[2], sys.argv[2:])
"""


@contextmanager
def systemd_socket() -> Iterator[socket.socket]:
    """The listening socket talkbot.socket makes; the test holds it as systemd would."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    try:
        yield sock
    finally:
        sock.close()


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def config_for(tmp_path: Path, talk: FakeTalk, llm: FakeLLM, port: int) -> Path:
    data = base_config(tmp_path, talk, llm, port=port)
    data["llm"]["timeout_s"] = 30
    path = tmp_path / "talkbot.toml"
    write_toml(path, data)
    return path


async def activate(config: Path, sock: socket.socket, log: Path) -> asyncio.subprocess.Process:
    """`talkbot serve` started the way systemd starts talkbot.service: on ``sock``."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LAUNCHER,
            str(sock.fileno()),
            sys.executable,
            "-m",
            "bot",
            "serve",
            "--config",
            str(config),
            pass_fds=[sock.fileno()],
            stdout=out,
            stderr=out,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def report(figure: str) -> None:
    """A measured figure, shown by `pytest -rP` (bench/README.md quotes them)."""
    sys.stderr.write(f"{figure}\n")


def log_events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def one_connection_each() -> aiohttp.ClientSession:
    """A client like Talk: a new connection for every webhook."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=PATIENCE_S),
    )


async def post_webhook(session: aiohttp.ClientSession, url: str, event: dict[str, Any]) -> int:
    body = php_json(event)
    async with session.post(f"{url}/webhook", data=body, headers=signed_headers(body)) as resp:
        return resp.status


def question(message_id: int, room: str = ROOMS[0]) -> dict[str, Any]:
    return create_event(f"talkbot, question {message_id}?", room=room, message_id=message_id)


async def stopped(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT_S)


@asynccontextmanager
async def reaped(proc: asyncio.subprocess.Process) -> AsyncIterator[asyncio.subprocess.Process]:
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- one process on systemd's socket --------------------------------------------------


async def test_r16_serve_answers_on_the_socket_systemd_passes_and_binds_nothing_itself(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """Under socket activation `[server] host/port` are not bound: the daemon serves the
    socket it was given and warns that the config names another address."""
    unused_port = free_port()
    config = config_for(tmp_path, talk, llm, port=unused_port)
    log = tmp_path / "talkbot.log"
    llm.reply("answered on the inherited socket")
    with systemd_socket() as sock:
        served_port = sock.getsockname()[1]
        async with reaped(await activate(config, sock, log)) as proc, one_connection_each() as s:
            assert await post_webhook(s, url_of(sock), question(41)) == 200
            await talk.wait_for_messages(1, timeout=PATIENCE_S)
            with pytest.raises(ConnectionRefusedError):  # nobody bound the config's port
                socket.create_connection(("127.0.0.1", unused_port), timeout=1).close()
            assert await stopped(proc) == 0
    assert talk.texts() == ["answered on the inherited socket"]
    events = {event["event"]: event for event in log_events(log)}
    assert events["server.socket_inherited"]["port"] == served_port
    differs = events["server.socket_differs_from_config"]
    assert (differs["served_port"], differs["config_port"]) == (served_port, unused_port)
    assert events["talkbot.listening"]["port"] == served_port


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")
async def test_r16_started_by_its_first_connection_the_daemon_answers_within_talks_timeout(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """systemd's own tool holds the socket and starts `talkbot serve` when the first
    webhook connects: that webhook waits for the whole start-up (exec, imports, config,
    store, resume) and must still be answered well within the 5 s Talk waits."""
    assert SOCKET_ACTIVATE is not None
    port = free_port()
    config = config_for(tmp_path, talk, llm, port=port)
    llm.reply("answered by a daemon started for this webhook")
    with (tmp_path / "talkbot.log").open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            SOCKET_ACTIVATE,
            f"--listen=127.0.0.1:{port}",
            sys.executable,
            "-m",
            "bot",
            "serve",
            "--config",
            str(config),
            stdout=out,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
    async with reaped(proc), one_connection_each() as session:
        assert proc.stderr is not None
        async with asyncio.timeout(PATIENCE_S):
            while b"Listening on" not in await proc.stderr.readline():
                pass
        started = time.monotonic()
        status = await post_webhook(session, f"http://127.0.0.1:{port}", question(42))
        startup_s = time.monotonic() - started  # exec to the first accepted webhook answered
        report(f"start-up to the first webhook answered: {startup_s:.3f} s")
        assert status == 200
        assert startup_s < TALK_TIMEOUT_S
        await talk.wait_for_messages(1, timeout=PATIENCE_S)
        assert await stopped(proc) == 0


# -- a restart under load ---------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    message_id: int
    sent_at: float
    answered_at: float
    outcome: int | str  # the HTTP status, or the client's error


class Load:
    """Webhooks at a steady rate across a few rooms, each on its own connection."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url
        self._tasks: list[asyncio.Task[Posted]] = []
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.answered: list[Posted] = []
        self._changed = asyncio.Condition()

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    async def until_answered(
        self, count: int, daemon: asyncio.subprocess.Process, after: float = 0.0
    ) -> None:
        """Until ``count`` webhooks sent at ``after`` or later have been answered; fails
        at once if the daemon exits instead."""
        answered = asyncio.create_task(self._answered(count, after))
        exited = asyncio.create_task(daemon.wait())
        done, _ = await asyncio.wait(
            [answered, exited], timeout=PATIENCE_S, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (answered, exited):
            task.cancel()
        await asyncio.gather(answered, exited, return_exceptions=True)
        assert daemon.returncode is None, f"talkbot exited with {daemon.returncode}"
        assert answered in done, "webhooks not answered in time"

    async def _answered(self, count: int, after: float) -> None:
        async with self._changed:
            await self._changed.wait_for(
                lambda: sum(p.sent_at >= after for p in self.answered) >= count
            )

    async def finish(self) -> list[Posted]:
        self._stop.set()
        assert self._runner is not None
        await self._runner
        return list(await asyncio.gather(*self._tasks))

    async def _run(self) -> None:
        interval = 1 / WEBHOOKS_PER_S
        message_id = 1000
        while not self._stop.is_set():
            message_id += 1
            room = ROOMS[message_id % len(ROOMS)]
            self._tasks.append(asyncio.create_task(self._post(message_id, room)))
            await asyncio.sleep(interval)  # the rate of the load, not a wait for work

    async def _post(self, message_id: int, room: str) -> Posted:
        sent_at = time.monotonic()
        outcome: int | str
        try:
            outcome = await post_webhook(self._session, self._url, question(message_id, room))
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        posted = Posted(message_id, sent_at, time.monotonic(), outcome)
        async with self._changed:
            self.answered.append(posted)
            self._changed.notify_all()
        return posted


async def test_r16_a_restart_on_the_same_socket_under_load_loses_no_webhook(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """10 webhooks/s in three rooms; SIGTERM, the process exits, a new one starts on the
    same socket (what `systemctl restart talkbot` does with talkbot.socket). Webhooks
    posted in the gap wait in the kernel's queue: every one gets its 200 within Talk's
    5 s, none is refused or reset, and each is answered exactly once."""
    with systemd_socket() as sock:
        url = url_of(sock)
        config = config_for(tmp_path, talk, llm, port=sock.getsockname()[1])
        async with one_connection_each() as session:
            load = Load(session, url)
            async with reaped(await activate(config, sock, tmp_path / "first.log")) as first:
                load.start()
                await load.until_answered(WEBHOOKS_PER_S, first)  # the first process is answering
                assert await stopped(first) == 0
            exited_at = time.monotonic()
            async with reaped(await activate(config, sock, tmp_path / "second.log")) as second:
                await load.until_answered(WEBHOOKS_PER_S, second, after=exited_at)
                posted = await load.finish()
                await talk.wait_for_messages(len(posted), timeout=PATIENCE_S)
                await talk.wait_settled(timeout=PATIENCE_S)
                assert await stopped(second) == 0

    assert [p for p in posted if p.outcome != 200] == []
    slowest = max(p.answered_at - p.sent_at for p in posted)
    # The test proves something only if webhooks did wait for the new process.
    restarted_at = min(p.answered_at for p in posted if p.sent_at >= exited_at)
    queued = sum(exited_at <= p.sent_at < restarted_at for p in posted)
    report(f"restart: {queued} webhooks queued while no process ran; slowest {slowest:.3f} s")
    assert slowest < TALK_TIMEOUT_S
    assert queued >= 2
    replies = collections.Counter(m.reply_to for m in talk.messages)
    assert replies == collections.Counter(p.message_id for p in posted)  # each exactly once


# -- the stop: what the old process does with connections it has accepted ------------


@asynccontextmanager
async def gate_on(
    settings: ServerSettings,
) -> AsyncIterator[tuple[ConnectionGate, web.AppRunner, str]]:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="stored")

    app = web.Application()
    app.router.add_post("/webhook", ok)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    listener = socket.create_server(("127.0.0.1", 0))
    url = url_of(listener)
    gate = open_gate(runner, listener, settings, fd_limit=1024)
    try:
        yield gate, runner, url
    finally:
        await gate.close()
        await runner.cleanup()


async def accepted_connection(
    gate: ConnectionGate, url: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    deadline = time.monotonic() + PATIENCE_S
    while gate.open_connections < 1:  # accepted by the gate, no request yet
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    return reader, writer


async def test_r16_a_webhook_accepted_just_before_the_stop_is_still_answered() -> None:
    """The stop closes connections still waiting for a request; one accepted a moment
    before SIGTERM is Talk's webhook on its way, and it gets its answer."""
    async with gate_on(ServerSettings()) as (gate, runner, url):
        reader, writer = await accepted_connection(gate, url)

        async def stop() -> None:
            await gate.close()
            await runner.cleanup()

        stopping = asyncio.create_task(stop())
        await asyncio.sleep(0.1)  # the injected fault: the request arrives after the stop began
        writer.write(b"POST /webhook HTTP/1.1\r\nHost: talkbot\r\nContent-Length: 0\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), PATIENCE_S)
        await stopping
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 200")


async def test_r16_a_silent_client_holds_the_stop_no_longer_than_the_grace() -> None:
    settings = ServerSettings(body_timeout_s=60)
    async with gate_on(settings) as (gate, _runner, url):
        _reader, writer = await accepted_connection(gate, url)
        started = time.monotonic()
        await gate.close()
        took = time.monotonic() - started
        writer.close()
    assert FIRST_REQUEST_GRACE_S * 0.9 <= took < FIRST_REQUEST_GRACE_S + 1.0


# -- what is accepted as systemd's socket ---------------------------------------------


def test_adopt_takes_a_listening_tcp_socket_and_keeps_it_from_children() -> None:
    with systemd_socket() as sock:
        adopted = adopt(os.dup(sock.fileno()))
        try:
            assert adopted.getsockname() == sock.getsockname()
            assert not adopted.get_inheritable()  # sd_listen_fds sets FD_CLOEXEC too
        finally:
            adopted.close()
        # Closing our copy leaves the socket listening: queued clients wait for the next one.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


@pytest.mark.parametrize(
    "kind",
    ["connected", "udp", "unix", "not-a-socket", "closed"],
)
def test_adopt_refuses_what_is_not_a_listening_tcp_socket(kind: str, tmp_path: Path) -> None:
    """Accept=yes passes a connected socket, ListenDatagram= a UDP one: one line, no serve."""
    with wrong_descriptor(kind, tmp_path) as fd, pytest.raises(TalkbotError) as refused:
        adopt(fd)
    assert "descriptor" in str(refused.value)


@contextmanager
def wrong_descriptor(kind: str, tmp_path: Path) -> Iterator[int]:
    opened: list[socket.socket] = []
    if kind == "connected":
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        opened += [server, client]
        fd = os.dup(client.fileno())
    elif kind == "udp":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened.append(udp)
        fd = os.dup(udp.fileno())
    elif kind == "unix":
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(tmp_path / "talkbot.sock"))
        unix.listen()
        opened.append(unix)
        fd = os.dup(unix.fileno())
    elif kind == "not-a-socket":
        fd = os.open(tmp_path / "file", os.O_CREAT | os.O_RDWR)
    else:
        fd = os.open(tmp_path / "gone", os.O_CREAT | os.O_RDWR)
        os.close(fd)
    try:
        yield fd
    finally:
        for sock in opened:
            sock.close()
        if kind != "closed":
            with contextlib.suppress(OSError):  # adopt closed it, as it may when it refuses
                os.close(fd)
