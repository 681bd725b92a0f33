"""The listening socket (systemd's, or bound here) and the connections on it: at most
``max_connections`` at once, so accepted work keeps the descriptors it needs (H05)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import resource
import socket
from collections.abc import Callable

import structlog
from aiohttp import web

from bot.config import ServerSettings
from bot.errors import TalkbotError
from bot.systemd import listen_fds

log = structlog.get_logger(__name__)

# Descriptors kept back from inbound connections for the store, the Talk, model and
# fetch clients, DNS lookups and logs: a quarter of the limit, at least this many (H05).
FD_RESERVE_MIN = 64
# More inbound connections than this at once is a flood, not Talk; each costs memory.
MAX_CONNECTIONS_CEILING = 4096
ACCEPT_RETRY_S = 1.0  # after EMFILE on accept, as asyncio's own server waits
SATURATED_RETRY_S = 0.1  # at the cap with every connection mid-request: look again soon
# On stop, a client accepted but whose request has not arrived yet gets this long (at most
# body_timeout_s) before the shutdown closes it: Talk sends at once, and never retries.
FIRST_REQUEST_GRACE_S = 2.0


def open_listener(settings: ServerSettings) -> socket.socket:
    """systemd's listening socket when it passed one (talkbot.socket: it stays open across
    restarts, so webhooks wait in its queue, R16), else one bound to ``[server] host/port``."""
    fds = listen_fds()
    if not fds:
        return bind(settings.host, settings.port)
    if len(fds) != 1:
        raise TalkbotError(
            f"systemd passed {len(fds)} sockets; talkbot.socket must have one ListenStream="
        )
    sock = adopt(fds[0])
    host, port = served_address(sock)
    log.info("server.socket_inherited", host=host, port=port)
    if not _same_address((host, port), (settings.host, settings.port)):
        log.warning(
            "server.socket_differs_from_config",
            served_host=host,
            served_port=port,
            config_host=settings.host,
            config_port=settings.port,
            hint="talkbot.socket's ListenStream= decides; keep [server] host/port equal to it",
        )
    return sock


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one line naming the address (a port in use, a bad host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise TalkbotError(f"cannot listen on {host}:{port}: {reason}") from None


def adopt(fd: int) -> socket.socket:
    """The socket systemd passed as ``fd``, checked to be a listening TCP socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:  # not open, or not a socket
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise TalkbotError(f"cannot use descriptor {fd} from systemd: {reason}") from None
    if not _listens_on_tcp(sock):
        sock.close()  # our copy only; the socket stays systemd's
        raise TalkbotError(
            f"descriptor {fd} from systemd is not a listening TCP socket "
            "(talkbot.socket needs ListenStream= and Accept=no)"
        )
    sock.set_inheritable(False)  # as sd_listen_fds does: no child keeps the port open
    return sock


def _listens_on_tcp(sock: socket.socket) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def served_address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def _same_address(served: tuple[str, int], configured: tuple[str, int]) -> bool:
    (host, port), (want_host, want_port) = served, configured
    try:
        return port == want_port and ipaddress.ip_address(host) == ipaddress.ip_address(want_host)
    except ValueError:  # a host name in the config: only the port can be compared
        return port == want_port


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

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def start(self) -> None:
        self._sock.setblocking(False)
        self._resume()

    async def close(self) -> None:
        """Stop accepting and close our copy of the listening socket; the connections
        already open are aiohttp's to finish.

        Under socket activation systemd keeps the socket open, so clients still queued
        wait there for the next process (R16). A client accepted just before gets up to
        ``FIRST_REQUEST_GRACE_S`` to send its request: the shutdown after this closes
        every connection still waiting for one, and Talk does not retry.
        """
        self._closed = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
        self._sock.close()  # never shutdown(): that would stop systemd's socket listening
        waiting = [c.requested for c in self._open if not c.requested.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=min(FIRST_REQUEST_GRACE_S, self.header_timeout_s))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def forget(self, connection: _Connection) -> None:
        connection.settle()
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
        # Done once a first request has arrived, or the connection is gone.
        self.requested: asyncio.Future[None] = gate.loop.create_future()
        self._gate = gate
        self._deadline: asyncio.TimerHandle | None = None

    def settle(self) -> None:
        """A first request arrived: the header deadline is over (a kept-alive connection
        idles under aiohttp's keep-alive timeout; closing it at the deadline could cut a
        request already on its way, which the client would see as a failure)."""
        if not self.requested.done():
            self.requested.set_result(None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

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
        if self.handler._request_count:  # aiohttp has parsed a request's head
            self.settle()

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
