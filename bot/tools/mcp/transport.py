"""An MCP server's transport as the connection uses it: the read stream watched for its
end, and a stdio server's stderr read into the log."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import structlog

log = structlog.get_logger(__name__)

MAX_STDERR_LINE = 300

OnLost = Callable[[str], None]


@contextlib.asynccontextmanager
async def watching(transport: Any, lost: OnLost) -> AsyncIterator[Any]:
    """The transport, with its read stream watched: the end of it is the server gone
    (a stdio server that exited), noticed without waiting for the next call."""
    async with transport as (read_stream, write_stream):
        yield EndWatch(read_stream, lost), write_stream
    lost("the server closed the connection")


class EndWatch:
    """A read stream that reports its end to ``lost``."""

    def __init__(self, inner: Any, lost: OnLost) -> None:
        self._inner, self._lost = inner, lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._lost("the server closed the connection")
            raise

    def __aiter__(self) -> EndWatch:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> EndWatch:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def stderr_to_log(server: str) -> AsyncIterator[Any]:
    """A file the server's stderr goes to, read into the log line by line (redacted like
    every line: a server that prints its own secrets does not leak them)."""
    read_fd, write_fd = os.pipe()
    reader = asyncio.create_task(_log_lines(read_fd, server), name=f"mcp-stderr:{server}")
    with os.fdopen(write_fd, "w") as errlog:
        try:
            yield errlog
        finally:
            errlog.close()  # the process has its own copy; ours must go for EOF
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(reader, 2.0)


async def _log_lines(fd: int, server: str) -> None:
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=64 * 1024)
    with os.fdopen(fd, "rb") as pipe:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe
        )
        try:
            while line := await stream.readline():
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    log.info("mcp.stderr", server=server, line=text[:MAX_STDERR_LINE])
        except (ValueError, asyncio.LimitOverrunError):
            log.info("mcp.stderr", server=server, line="(a line too long to log)")
        finally:
            transport.close()
