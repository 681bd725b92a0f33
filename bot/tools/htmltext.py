"""HTML to text in a killable worker process, bounded in size, depth, time and memory (H01).

html2text is pure Python and its output grows with list and quote depth times lines:
135 KB of nested ``<ul><li>`` costs about 40 s of CPU and 500 MB. A thread cannot be
stopped, and the default thread pool is the one DNS lookups wait in, so each conversion
runs in a child process of its own (``python -I`` on this file): it refuses nesting
deeper than a cap while it parses, its address space and CPU time are capped with
``setrlimit``, and the daemon kills it when its time is up or the daemon stops. A
semaphore caps how many run at once. This file is also the worker's program, so it
imports nothing from talkbot.
"""

from __future__ import annotations

import asyncio
import math
import resource
import signal
import sys
from dataclasses import dataclass
from typing import Any

import html2text
import structlog

log = structlog.get_logger(__name__)

WORKER = __file__
MIB = 1024 * 1024
# html2text indents every line by the depth of these: the output grows with depth x lines.
NESTING_TAGS = frozenset({"ul", "ol", "dl", "blockquote"})

# The worker's answer: one status byte, one byte saying whether its limits hold, the text.
OK, TOO_DEEP, NO_MEMORY, FAILED = b"k", b"d", b"m", b"e"
LIMITED, UNLIMITED = b"1", b"0"

STOPPING = "the bot is stopping; the page was not converted (ask again in a moment)"
BUSY = "the bot is busy converting other pages; try again in a moment"
TOO_SLOW = "the page took too long to convert (more than {:g} s)"
TOO_LARGE = "the page is too large to convert (over the {} MB memory limit)"
TOO_DEEP_TEXT = "the page is too complex to convert (nesting deeper than {})"
BROKEN = "the page could not be converted to text"


class ConversionError(Exception):
    """A conversion that was refused or stopped; the text says why, for the model."""


@dataclass(frozen=True)
class ConvertLimits:
    timeout_s: float  # wall clock per conversion, and again for waiting for a slot
    max_bytes: int  # HTML beyond this is cut before converting
    max_depth: int  # nesting of lists and quotes
    memory_mb: int  # the worker's address space
    max_parallel: int  # conversions running at once
    max_chars: int  # the longest text the worker sends back


# -- the worker side ------------------------------------------------------------------


class TooDeepError(Exception):
    pass


class BoundedHTML2Text(html2text.HTML2Text):
    """html2text that stops as soon as lists or quotes nest deeper than ``max_depth``."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(bodywidth=0)
        self.ignore_images = True
        self.unicode_snob = True
        self.max_depth = max_depth
        self.depth = 0

    def handle_tag(self, tag: str, attrs: dict[str, str | None], start: bool) -> None:
        if tag in NESTING_TAGS:
            if start:
                self.depth += 1
                if self.depth > self.max_depth:
                    raise TooDeepError
            elif self.depth:
                self.depth -= 1
        super().handle_tag(tag, attrs, start)


def html_to_text(html: str, max_depth: int) -> str:
    """Readable text with links; scripts, styles and images dropped. TooDeepError."""
    return BoundedHTML2Text(max_depth).handle(html).strip()


def limit_self(memory_mb: int, cpu_s: int) -> bytes:
    """Cap this process's address space and CPU time; UNLIMITED when the system refuses."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * MIB, memory_mb * MIB))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    except (OSError, ValueError):  # a seccomp filter without setrlimit: the parent warns
        return UNLIMITED
    return LIMITED


def answer(html: str, max_depth: int, max_chars: int) -> tuple[bytes, str]:
    try:
        return OK, html_to_text(html, max_depth)[:max_chars]
    except TooDeepError:
        return TOO_DEEP, ""
    except MemoryError:
        return NO_MEMORY, ""
    except Exception:  # html2text on hostile input: any failure is "could not convert"
        return FAILED, ""


def work(argv: list[str]) -> int:
    """The worker: limits from argv, HTML on stdin, status and text on stdout."""
    max_depth, memory_mb, cpu_s, max_chars = (int(value) for value in argv)
    limited = limit_self(memory_mb, cpu_s)
    html = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    status, text = answer(html, max_depth, max_chars)
    sys.stdout.buffer.write(status + limited + text.encode("utf-8", errors="replace"))
    sys.stdout.buffer.flush()
    return 0


# -- the daemon side ------------------------------------------------------------------


def cap_html(html: str, max_bytes: int) -> tuple[bytes, bool]:
    """The HTML as UTF-8, cut at ``max_bytes`` (on a character boundary); True when cut."""
    data = html.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return data, False
    return data[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8"), True


class HtmlConverter:
    """Runs each conversion in a worker process of its own and kills it when time is up.

    ``stop`` kills the running ones and refuses new ones: a page being converted must not
    hold up the daemon's stop.
    """

    def __init__(self, limits: ConvertLimits) -> None:
        self._limits = limits
        self._slots = asyncio.Semaphore(limits.max_parallel)
        self._running: set[asyncio.subprocess.Process] = set()
        self._stopping = False
        self._warned = False

    def reconfigure(self, limits: ConvertLimits) -> None:
        if limits.max_parallel != self._limits.max_parallel:
            self._slots = asyncio.Semaphore(limits.max_parallel)  # running ones keep theirs
        self._limits = limits

    @property
    def running(self) -> int:
        return len(self._running)

    async def convert(self, html: str) -> tuple[str, bool]:
        """The page's text, and True when the HTML was cut at the size cap first."""
        if self._stopping:
            raise ConversionError(STOPPING)
        limits, slots = self._limits, self._slots
        data, cut = cap_html(html, limits.max_bytes)
        try:
            async with asyncio.timeout(limits.timeout_s):
                await slots.acquire()
        except TimeoutError:
            log.warning("htmltext.busy", running=self.running)
            raise ConversionError(BUSY) from None
        try:
            return await self._run(data, limits), cut
        finally:
            slots.release()

    async def _run(self, data: bytes, limits: ConvertLimits) -> str:
        if self._stopping:
            raise ConversionError(STOPPING)
        proc = await asyncio.create_subprocess_exec(
            *worker_command(limits),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._running.add(proc)
        if self._stopping:  # stop() came while the worker was starting
            proc.kill()
        try:
            async with asyncio.timeout(limits.timeout_s):
                out, _err = await proc.communicate(data)
        except TimeoutError:
            log.warning("htmltext.killed", reason="time", timeout_s=limits.timeout_s)
            raise ConversionError(TOO_SLOW.format(limits.timeout_s)) from None
        finally:
            self._running.discard(proc)
            if proc.returncode is None:  # timed out, or the turn was cancelled
                proc.kill()
                await proc.wait()
        return self._result(proc.returncode, out, limits)

    def _result(self, code: int | None, out: bytes, limits: ConvertLimits) -> str:
        status, limited, text = out[:1], out[1:2], out[2:]
        if limited == UNLIMITED and not self._warned:
            self._warned = True
            log.warning("htmltext.unlimited", reason="setrlimit refused: only time is capped")
        if status == OK and code == 0:
            return text.decode("utf-8", errors="replace")
        if self._stopping:
            raise ConversionError(STOPPING)
        log.warning("htmltext.refused", status=status.decode() or None, code=code)
        raise ConversionError(_refusal(status, code, limits))

    async def stop(self) -> None:
        """Kill every running conversion and refuse new ones (the daemon is stopping)."""
        self._stopping = True
        for proc in list(self._running):
            if proc.returncode is None:
                proc.kill()
        if self._running:
            log.info("htmltext.stopped", killed=len(self._running))
        await asyncio.gather(*(proc.wait() for proc in self._running))


def worker_command(limits: ConvertLimits) -> list[str]:
    cpu_s = math.ceil(limits.timeout_s) + 1  # a backstop: the parent kills it first
    args: list[Any] = [limits.max_depth, limits.memory_mb, cpu_s, limits.max_chars]
    return [sys.executable, "-I", WORKER, *(str(arg) for arg in args)]


def _refusal(status: bytes, code: int | None, limits: ConvertLimits) -> str:
    if status == TOO_DEEP:
        return TOO_DEEP_TEXT.format(limits.max_depth)
    if status == NO_MEMORY:
        return TOO_LARGE.format(limits.memory_mb)
    if code == -signal.SIGXCPU:
        return TOO_SLOW.format(limits.timeout_s)
    return BROKEN


if __name__ == "__main__":
    sys.exit(work(sys.argv[1:]))
