"""The listening socket and the connections on it: at most ``max_connections`` at once,
so accepted work keeps the descriptors it needs (H05)."""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import socket
from collections.abc import Callable

import structlog
from aiohttp import web

from bot.config import ServerSettings
from bot.errors import TalkbotError

log = structlog.get_logger(__name__)

# Descriptors kept back from inbound connections for the store, the Talk, model and
# fetch clients, DNS lookups and logs: a quarter of the limit, at least this many (H05).
FD_RESERVE_MIN = 64
# More inbound connections than this at once is a flood, not Talk; each costs memory.
MAX_CONNECTIONS_CEILING = 4096
ACCEPT_RETRY_S = 1.0  # after EMFILE on accept, as asyncio's own server waits
SATURATED_RETRY_S = 0.1  # at the cap with every connection mid-request: look again soon


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one line naming the address (a port in use, a bad host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise TalkbotError(f"cannot listen on {host}:{port}: {reason}") from None


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one where allowed; the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard in (soft, resource.RLIM_INFINITY):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a container or a seccomp filter (the unit's) may refuse
        return soft
    return hard


def default_max_connections(fd_limit: int) -> int:
    """Inbound connections allowed at once: the descriptor limit minus a reserve (H05)."""
    if fd_limit == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CEILING
    reserve = max(FD_RESERVE_MIN, fd_limit // 4)
    return max(1, min(MAX_CONNECTIONS_CEILING, fd_limit - reserve))


def open_gate(
    runner: web.AppRunner, listener: socket.socket, settings: ServerSettings, fd_limit: int
) -> ConnectionGate:
    if runner.server is None:  # AppRunner.setup() makes it; checked for the type
        raise TalkbotError("the web server was not set up")
    gate = ConnectionGate(
        listener,
        runner.server,
        limit=settings.max_connections or default_max_connections(fd_limit),
        header_timeout_s=settings.body_timeout_s,
    )
    gate.start()
    return gate


class ConnectionGate:
    """Accepts on the listening socket itself, so that at most ``limit`` connections are
    open at once and accepted work keeps the descriptors it needs (H05).

    At the cap it stops accepting (new clients wait in the kernel's queue) and closes the
    oldest connection waiting for a request: a slow or idle client, never one mid-request;
    when every one is mid-request it looks again shortly. A connection still waiting for
    its request ``header_timeout_s`` after it was accepted is closed. (asyncio's own
    accept loop cannot be capped: it takes up to a backlog of sockets at a time.)
    """

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], web.RequestHandler],
        *,
        limit: int,
        header_timeout_s: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.header_timeout_s = header_timeout_s
        self._sock = sock
        self._factory = factory
        self._open: dict[_Connection, None] = {}  # oldest first
        self._tasks: set[asyncio.Task[object]] = set()
        self._accepting = False
        self._closed = False
        self._saturated = False  # at the cap since the last time the queue was empty
        self._retry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._sock.setblocking(False)
        self._resume()

    async def close(self) -> None:
        """Stop accepting; the connections already open are aiohttp's to finish."""
        self._closed = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
        self._sock.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def forget(self, connection: _Connection) -> None:
        self._open.pop(connection, None)
        self._resume()

    def _resume(self) -> None:
        if not self._accepting and not self._closed:
            self.loop.add_reader(self._sock.fileno(), self._accept)
            self._accepting = True

    def _pause(self) -> None:
        if self._accepting:
            self.loop.remove_reader(self._sock.fileno())
            self._accepting = False

    def _accept(self) -> None:
        if len(self._open) >= self.limit:  # a client waits and there is no room
            self._pause()
            self._make_room()
            return
        while len(self._open) < self.limit:
            try:
                sock, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                self._saturated = False
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: what the reserve is for
                log.warning("server.accept_failed", reason=os.strerror(exc.errno or 0))
                self._retry_later(ACCEPT_RETRY_S)
                return
            self._start(sock)

    def _make_room(self) -> None:
        if not self._saturated:  # once per flood, not once per connection
            self._saturated = True
            log.warning("server.connection_cap_reached", max_connections=self.limit)
        idle = next((c for c in self._open if c.waiting_for_request()), None)
        if idle is None:
            self._retry_later(SATURATED_RETRY_S)
        else:
            idle.close()  # its connection_lost resumes accepting

    def _retry_later(self, delay_s: float) -> None:
        self._pause()
        if self._retry is None:
            self._retry = self.loop.call_later(delay_s, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self._resume()

    def _start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        connection = _Connection(self, self._factory())
        self._open[connection] = None
        task: asyncio.Task[object] = self.loop.create_task(
            self.loop.connect_accepted_socket(lambda: connection, sock)
        )
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._started, connection, sock))

    def _started(
        self, connection: _Connection, sock: socket.socket, task: asyncio.Task[object]
    ) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            sock.close()
            self.forget(connection)


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's handler, counted and timed by its gate."""

    def __init__(self, gate: ConnectionGate, handler: web.RequestHandler) -> None:
        self.handler = handler
        self._gate = gate
        self._deadline: asyncio.TimerHandle | None = None

    def waiting_for_request(self) -> bool:
        """Slow headers, or idle between requests: the test aiohttp's own keep-alive
        timer makes (``RequestHandler._process_keepalive``)."""
        waiter = self.handler._waiter
        return waiter is not None and not waiter.done()

    def close(self) -> None:
        self.handler.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadline = self._gate.loop.call_later(self._gate.header_timeout_s, self._expire)
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self.handler.connection_lost(exc)
        self._gate.forget(self)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        self.handler.eof_received()
        return None  # close the transport, as aiohttp's handler does

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def _expire(self) -> None:
        if self.waiting_for_request():
            self.close()
