"""systemd integration, no library: sd_notify READY/STOPPING/WATCHDOG over $NOTIFY_SOCKET,
and the listening sockets of socket activation (sd_listen_fds)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, MutableMapping

import structlog

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first descriptor systemd passes


class Notifier:
    """Sends sd_notify states to the service manager; does nothing outside systemd."""

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False (logged once) if it failed."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(states).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd.notify_failed", error=exc.strerror or repr(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | bytes:
    # "@name" is a Linux abstract socket: a leading NUL byte instead of a path.
    return b"\0" + address[1:].encode() if address.startswith("@") else address


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between pings (half of WatchdogSec=), or None when no watchdog applies to us."""
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.isdigit() and int(owner) != (os.getpid() if pid is None else pid):
        return None
    return usec / 2 / 1_000_000


def listen_fds(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> list[int]:
    """The descriptors systemd passed this process (sd_listen_fds(3)), or none.

    They are ours only if LISTEN_PID is our pid. The variables are removed either way,
    as sd_listen_fds(unset_environment=1) does, so a child never takes them for its own.
    """
    environ = os.environ if environ is None else environ
    owner = environ.pop("LISTEN_PID", "")
    count = environ.pop("LISTEN_FDS", "")
    environ.pop("LISTEN_FDNAMES", None)  # names are for services with several sockets
    if not (owner.isdigit() and count.isdigit()):
        return []
    if int(owner) != (os.getpid() if pid is None else pid):
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))


class Watchdog:
    """Pings from a task on the event loop, so a stalled loop stops the pings (R15)."""

    def __init__(self, notifier: Notifier, interval_s: float, *, sleep: Sleep = asyncio.sleep):
        if interval_s <= 0:
            raise ValueError("the watchdog interval must be positive")
        self._notifier = notifier
        self._interval_s = interval_s
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._ping(), name="systemd-watchdog")
            self._task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() neither raises the task's CancelledError nor swallows our own.
        await asyncio.wait([task])

    async def _ping(self) -> None:
        while True:
            self._notifier.watchdog()
            await self._sleep(self._interval_s)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("systemd.watchdog_failed", error=repr(exc))
