"""Structured logging: configured once by the CLI, redacted, with a ring of recent lines."""

from __future__ import annotations

import collections
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"
# Keys whose values are secrets: always redacted.
SECRET_KEYS = frozenset(
    {"secret", "bot_secret", "api_key", "authorization", "password", "signature", "random"}
)
# Keys whose values are what people wrote or what tools got: redacted unless debug.
CONTENT_KEYS = frozenset({"text", "message", "content", "args", "arguments", "prompt", "reply"})


# Repeated lines (H05): at most LOG_BURST lines of one event and level per LOG_WINDOW_S;
# the rest are counted and one "log.suppressed" line gives the count when the window
# ends. A flood of bad requests once wrote 70 MB in 35 s; one line per turn or per
# webhook of a busy bot stays well below 5 a second.
LOG_BURST = 50
LOG_WINDOW_S = 10.0
SUPPRESSED_EVENT = "log.suppressed"


class LogRing:
    """The last N rendered log lines, already redacted; read by !logs and bot_logs."""

    def __init__(self, size: int = 2000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def tail(self, count: int) -> list[str]:
        with self._lock:
            if count <= 0:
                return []
            return list(self._lines)[-count:]


class Redactor:
    """A structlog processor that removes secrets (by key and by value) and content."""

    def __init__(self, secrets: Iterable[str] = (), *, debug: bool = False) -> None:
        self._secrets: tuple[str, ...] = ()
        self.debug = debug
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        # Short values would redact ordinary words; real secrets are long.
        found = {s for s in secrets if len(s) >= 8}  # noqa: PLR2004 - see above
        self._secrets = tuple(sorted(set(self._secrets) | found, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event):
            lowered = key.lower()
            if lowered in SECRET_KEYS:
                event[key] = REDACTED
            elif lowered in CONTENT_KEYS and not self.debug:
                event[key] = _describe(event[key])
            else:
                event[key] = self._clean(event[key])
        return event

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in SECRET_KEYS else self._clean(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value


@dataclass
class _Window:
    ends: float
    lines: int = 0
    suppressed: int = 0


class LogLimiter:
    """A structlog processor (and a filter for the standard library's records) that lets
    the first ``burst`` lines of each event and level through per ``window_s`` and drops
    the rest, then writes one ``log.suppressed`` line with their count (H05).

    The first line of a window always passes; events are never merged, so two different
    errors each keep their own lines. The count is written with the first line logged
    after the window ends.
    """

    def __init__(
        self,
        burst: int = LOG_BURST,
        window_s: float = LOG_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = burst
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._next_end = math.inf
        self._lock = threading.Lock()

    def __call__(
        self, _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        self.report_ended()
        name = str(event.get("event", ""))
        if name == SUPPRESSED_EVENT or self.admit(name, str(event.get("level", method))):
            return event
        raise structlog.DropEvent

    def admit(self, name: str, level: str) -> bool:
        """Whether this line is written; when not, it is counted."""
        now = self._clock()
        with self._lock:
            window = self._windows.get((name, level))
            if window is None:
                window = self._windows[(name, level)] = _Window(ends=now + self._window_s)
                self._next_end = min(self._next_end, window.ends)
            if window.lines < self._burst:
                window.lines += 1
                return True
            window.suppressed += 1
            return False

    def report_ended(self) -> None:
        """One ``log.suppressed`` line for each window that ended with lines dropped."""
        for (name, level), count in self._close_ended():
            logger = structlog.get_logger(__name__)
            write = getattr(logger, level, logger.warning)  # a library's own level: warning
            write(SUPPRESSED_EVENT, similar=name, count=count, window_s=self._window_s)

    def _close_ended(self) -> list[tuple[tuple[str, str], int]]:
        now = self._clock()
        with self._lock:
            if now < self._next_end:
                return []
            ended = [key for key, window in self._windows.items() if window.ends <= now]
            counts = [(key, self._windows.pop(key).suppressed) for key in ended]
            self._next_end = min((w.ends for w in self._windows.values()), default=math.inf)
        return [(key, count) for key, count in counts if count]


class _StandardLibraryLimit(logging.Filter):
    """The same limit for what libraries log through ``logging`` (aiohttp, asyncio)."""

    def __init__(self, limiter: LogLimiter) -> None:
        super().__init__()
        self._limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        self._limiter.report_ended()
        return self._limiter.admit(f"{record.name}: {record.msg}", record.levelname.lower())


def _describe(value: Any) -> str:
    """What is left of redacted content: its size, which helps debugging without leaking."""
    size = len(value) if isinstance(value, str | bytes | list | dict | tuple) else 0
    return f"[{size} chars]" if isinstance(value, str) else f"[redacted {type(value).__name__}]"


class RingWriter:
    """Renders each event to one JSON line for the ring, newlines escaped (L01)."""

    def __init__(self, ring: LogRing) -> None:
        self._ring = ring

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        self._ring.append(json.dumps(dict(event), default=str, ensure_ascii=False))
        return event


def _escape_newlines(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and ("\n" in value or "\r" in value) and key != "exception":
            event[key] = value.replace("\r", "\\r").replace("\n", "\\n")
    return event


def configure_logging(
    *,
    redactor: Redactor,
    ring: LogRing,
    debug: bool = False,
    stream: TextIO | None = None,
    json_lines: bool | None = None,
    limiter: LogLimiter | None = None,
) -> None:
    """JSON lines off a TTY, readable console output on one; called once by the CLI.
    ``limiter`` rate-limits repeated lines (the daemon's, H05); None writes every line."""
    stream = stream or sys.stderr
    as_json = (not stream.isatty()) if json_lines is None else json_lines
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *([limiter] if limiter is not None else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            _escape_newlines,
            RingWriter(ring),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library: warnings and up, same stream.
    logging.basicConfig(stream=stream, level=logging.WARNING, force=True)
    if limiter is not None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_StandardLibraryLimit(limiter))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
