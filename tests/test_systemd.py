"""sd_notify and the watchdog, against a real Unix datagram socket standing in for systemd;
the socket activation variables (sd_listen_fds)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bot.serving import FD_RESERVE_MIN, default_max_connections
from bot.systemd import Notifier, Watchdog, listen_fds, watchdog_interval

RECV_TIMEOUT_S = 5.0
UNIT = Path(__file__).resolve().parents[1] / "systemd" / "talkbot.service"


@contextmanager
def bound_notify_socket(directory: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    path = directory / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock, str(path)
    finally:
        sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    with bound_notify_socket(tmp_path) as bound:
        yield bound


async def receive(sock: socket.socket, timeout_s: float = RECV_TIMEOUT_S) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout_s)
    return data.decode()


async def test_ready_and_stopping_reach_the_service_manager(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("listening on 127.0.0.1:8585")
    assert await receive(sock) == "READY=1\nSTATUS=listening on 127.0.0.1:8585"
    assert notifier.stopping()
    assert await receive(sock) == "STOPPING=1"
    notifier.close()


async def test_abstract_socket_names_are_understood() -> None:
    name = f"talkbot-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    try:
        notifier = Notifier(f"@{name}")
        assert notifier.watchdog()
        assert await receive(sock) == "WATCHDOG=1"
        notifier.close()
    finally:
        sock.close()


def test_outside_systemd_notifying_does_nothing_and_never_fails() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.ready() is False
    assert notifier.watchdog() is False  # still no exception on the second try
    notifier.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # WatchdogSec=30: ping every 15 s
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_sec(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


async def test_watchdog_pings_until_stopped(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier(path)
    watchdog = Watchdog(notifier, 0.01)
    watchdog.start()
    assert watchdog.running
    assert [await receive(sock) for _ in range(3)] == ["WATCHDOG=1"] * 3
    await watchdog.stop()
    assert not watchdog.running  # the task is finished, not merely asked to stop
    await watchdog.stop()  # stopping twice is harmless
    notifier.close()


async def test_r15_a_stalled_event_loop_stops_the_pings(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """The pings come from the event loop, so a blocked loop lets systemd's watchdog fire."""
    sock, path = notify_socket
    sock.setblocking(True)
    sock.settimeout(0.05)
    arrivals: list[float] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                sock.recv(4096)
            except TimeoutError:
                continue
            arrivals.append(time.monotonic())

    listener = threading.Thread(target=listen)
    listener.start()
    notifier = Notifier(path)
    watchdog = Watchdog(notifier, 0.01)
    watchdog.start()
    try:
        await _until(lambda: len(arrivals) >= 2)
        stalled_at = time.monotonic()
        time.sleep(0.5)  # noqa: ASYNC251 - the injected fault: a handler blocking the loop
        stalled_until = time.monotonic()
        count = len(arrivals)
        await _until(lambda: len(arrivals) >= count + 2)  # the loop runs again: pings resume
    finally:
        await watchdog.stop()
        notifier.close()
        done.set()
        listener.join()
    during = [t for t in arrivals if stalled_at + 0.05 < t < stalled_until]
    assert during == []


async def _until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Watchdog(Notifier(None), 0)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "1"}, [3]),  # talkbot.socket: one ListenStream=
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}, [3, 4]),
        ({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, []),  # passed to another process: not ours
        ({"LISTEN_FDS": "1"}, []),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "one"}, []),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, []),
        ({}, []),  # not socket-activated: serve binds [server] host/port itself
    ],
)
def test_r16_listen_fds_takes_systemds_sockets_once_and_hides_them_from_children(
    environ: dict[str, str], expected: list[int]
) -> None:
    environ = {**environ, "PATH": "/usr/bin"}
    assert listen_fds(environ, pid=4242) == expected
    assert environ == {"PATH": "/usr/bin"}  # a child the daemon starts inherits none of them


def test_h05_the_unit_sets_a_descriptor_limit_with_room_beside_the_connection_cap() -> None:
    """systemd's default soft limit is 1024; the unit sets both limits, and the daemon's
    default cap leaves at least a quarter of them for the store and outgoing calls."""
    values = [
        line.split("=", 1)[1].strip()
        for line in UNIT.read_text().splitlines()
        if line.startswith("LimitNOFILE=")
    ]
    assert len(values) == 1
    limit = int(values[0])  # one number: soft and hard alike, so nothing can raise it
    assert limit >= 8192
    assert limit - default_max_connections(limit) >= max(FD_RESERVE_MIN, limit // 4)
