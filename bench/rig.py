"""The benchmark rig: a real `talkbot serve` process, its fakes, /proc readings, load.

Everything runs on 127.0.0.1. The daemon is a subprocess with a real config file in a
temporary directory, so what is measured is the product as deployed (one process, one
event loop, JSON logs to a file), and its CPU time and memory can be read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.talk import webhooks

SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"  # noqa: S105 - loopback only
ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_ids = itertools.count(1)


# -- webhooks ----------------------------------------------------------------------------


def chat_event(text: str, room: str, *, one_to_one: bool = False, sender: str = "alice") -> bytes:
    """A Create webhook body with a message id never used before in this run."""
    name = json.dumps([sender, "bob"]) if one_to_one else f"Room {room}"
    event = webhooks.create_event(
        text,
        actor=webhooks.person(f"users/{sender}", sender.title(), "3"),
        room=room,
        room_name=name,
        message_id=next(_ids),
    )
    return webhooks.encode_json(event)


def signed(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, webhooks.sign_webhook(SECRET, body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- /proc -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User plus system CPU time of each thread of a process so far, by thread id (the
    main thread's id is the pid: for talkbot, the event loop)."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return times


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


# -- the daemon as a process ---------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_toml(path: Path, data: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
    path.write_text("\n".join(lines) + "\n")


def talkbot_config(
    workdir: Path, *, talk_url: str, llm_url: str, extra: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "nextcloud": {"url": talk_url, "bot_secret": SECRET},
        "llm": {"base_url": llm_url, "api_key": "sk-bench", "model": "bench", "timeout_s": 600},
        "access": {"admins": ["root"], "users": [], "admin_room": "adminroom1"},
        "chat": {"bot_name": "talkbot"},
        "storage": {"path": str(workdir / "talkbot.sqlite3")},
    }
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return config


@dataclass
class Process:
    """A server subprocess: its pid, its URL, where it logs, its SQLite file if it has one."""

    proc: asyncio.subprocess.Process
    url: str
    log: Path
    store: Path | None = None

    @property
    def wal(self) -> Path | None:
        """The store's write-ahead log (SQLite's own name for it), None without a store."""
        return None if self.store is None else Path(f"{self.store}-wal")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhook"


@contextlib.asynccontextmanager
async def spawn(
    argv: list[str],
    url: str,
    log: Path,
    ready_path: str,
    *,
    store: Path | None = None,
    cwd: Path = ROOT,
) -> AsyncIterator[Process]:
    """Start a server process, wait until ``ready_path`` answers 200, kill it at the end."""
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdout=log_file, stderr=log_file, env={**os.environ}
        )
    try:
        await _wait_ready(proc, f"{url}{ready_path}", log)
        yield Process(proc, url, log, store)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)  # stalled turns would hold a SIGTERM for 60 s
            await proc.wait()


async def _wait_ready(proc: asyncio.subprocess.Process, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"server exited early, see {log}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"server did not become ready: {url}")


@contextlib.asynccontextmanager
async def talkbot(
    workdir: Path,
    *,
    talk_url: str,
    llm_url: str,
    extra: dict[str, dict[str, Any]] | None = None,
    tree: Path = ROOT,
) -> AsyncIterator[Process]:
    """`talkbot serve` with a config written into ``workdir``; ``store`` is its SQLite file.
    ``tree``: the checkout whose ``bot`` package runs (another commit's worktree, to
    compare before and after in one run)."""
    config = talkbot_config(workdir, talk_url=talk_url, llm_url=llm_url, extra=extra)
    path = workdir / "talkbot.toml"
    write_toml(path, config)
    url = f"http://127.0.0.1:{config['server']['port']}"
    argv = [sys.executable, "-m", "bot", "serve", "--config", str(path)]
    storage = config.get("storage", {})
    store = Path(storage["path"]) if "path" in storage and "url" not in storage else None
    async with spawn(
        argv, url, workdir / "talkbot.log", "/readyz", store=store, cwd=tree
    ) as process:
        yield process


@dataclass
class FileSize:
    """The size of one file, sampled while a run goes on (0 while it does not exist)."""

    path: Path
    largest: int = 0
    last: int = 0
    samples: int = 0

    def sample(self) -> None:
        try:
            self.last = self.path.stat().st_size
        except FileNotFoundError:
            self.last = 0
        self.largest = max(self.largest, self.last)
        self.samples += 1

    def summary(self) -> str:
        mib = 1024 * 1024
        return f"max {self.largest / mib:.2f} MiB, final {self.last / mib:.2f} MiB"


@contextlib.asynccontextmanager
async def file_sizes(paths: list[Path], interval_s: float = 0.1) -> AsyncIterator[list[FileSize]]:
    """Sample the size of each file every ``interval_s`` on this loop, and once at the end."""
    sizes = [FileSize(path) for path in paths]

    async def sample_forever() -> None:
        while True:
            for size in sizes:
                size.sample()
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(sample_forever(), name="file-sizes")
    try:
        yield sizes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for size in sizes:
            size.sample()  # the final size


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="talkbot-bench-") as name:
        yield Path(name)


async def wait_drained(process: Process, timeout: float = 120.0) -> None:  # noqa: ASYNC109
    """Until the daemon reports no accepted event left to handle."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{process.url}/readyz") as resp:
                if (await resp.json())["inbox_backlog"] == 0:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the daemon did not drain its inbox")


# -- a scripted model: one tool round, fixed latency ----------------------------------------


@dataclass
class ToolRoundModel:
    """OpenAI-compatible: asks for current_time first, answers once it has the result."""

    latency_s: float
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    # When each request arrived (perf_counter) and whether it carried a tool result.
    arrivals: list[tuple[float, bool]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    url: str = ""

    async def __aenter__(self) -> ToolRoundModel:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _complete(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            last = body["messages"][-1]
            self.arrivals.append((time.perf_counter(), last["role"] == "tool"))
            await asyncio.sleep(self.latency_s)
        finally:
            self.in_flight -= 1
        if last["role"] == "tool":
            message: dict[str, Any] = {"role": "assistant", "content": "It is " + last["content"]}
            finish = "stop"
        else:
            call = {
                "id": f"call_{self.requests}",
                "type": "function",
                "function": {"name": "current_time", "arguments": '{"timezone": "UTC"}'},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        return web.json_response(
            {
                "id": "bench",
                "object": "chat.completion",
                "created": 0,
                "model": "bench",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            }
        )


# -- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """What a load run measured: statuses, latencies, wall time."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0

    def record(self, status: int, latency: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return 1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def summary(self) -> str:
        return (
            f"{self.count} webhooks in {self.seconds:.1f} s = {self.rate:,.0f}/s, "
            f"p50 {self.percentile_ms(50):.1f} ms, p99 {self.percentile_ms(99):.1f} ms, "
            f"max {self.percentile_ms(100):.1f} ms, statuses {self.statuses}"
            + (f", errors {self.errors}" if self.errors else "")
        )


Request = tuple[bytes, dict[str, str]]


def session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector)


async def _post(http: aiohttp.ClientSession, url: str, request: Request) -> int:
    body, headers = request
    async with http.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def closed_loop(
    url: str,
    requests: Callable[[], Request],
    *,
    connections: int,
    seconds: float,
    count: int | None = None,
) -> Load:
    """``connections`` clients, each sending the next request as soon as it has an answer.

    Runs for ``seconds``, or until ``count`` requests were sent.
    """
    load = Load()
    issued = itertools.count(1)
    async with session(connections) as http:
        started = time.perf_counter()
        stop = started + seconds

        async def client() -> None:
            while (now := time.perf_counter()) < stop:
                if count is not None and next(issued) > count:
                    return
                try:
                    status = await _post(http, url, requests())
                except aiohttp.ClientError:
                    load.errors += 1
                    continue
                load.record(status, time.perf_counter() - now)

        await asyncio.gather(*(client() for _ in range(connections)))
        load.seconds = time.perf_counter() - started
    return load


async def paced(
    url: str, requests: Callable[[], Request], *, rate: float, seconds: float, connections: int
) -> Load:
    """Open loop at a fixed rate; latency counts from when a request was due (no omission)."""
    load = Load()
    total = int(rate * seconds)
    async with session(connections) as http:
        started = time.perf_counter()

        async def one(due: float, request: Request) -> None:
            try:
                status = await _post(http, url, request)
            except aiohttp.ClientError:
                load.errors += 1
                return
            load.record(status, time.perf_counter() - due)

        tasks = []
        for i in range(total):
            due = started + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(one(due, requests())))
        await asyncio.gather(*tasks)
        load.seconds = time.perf_counter() - started
    return load


def machine() -> str:
    cpus = os.cpu_count()
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{cpus} CPUs ({model}), Python {sys.version.split()[0]}, load average {load}"
