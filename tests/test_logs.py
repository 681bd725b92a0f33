"""Repeated log lines are rate-limited through the real logging setup (H05)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from bot.logs import LOG_BURST, LOG_WINDOW_S, LogLimiter, LogRing, Redactor, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Logs:
    stream: io.StringIO
    ring: LogRing
    clock: Clock
    log: Any = field(default_factory=lambda: structlog.get_logger("tests.logs"))

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def events(self) -> list[str]:
        return [str(line.get("event")) for line in self.lines()]


@pytest.fixture
def logs() -> Iterator[Logs]:
    """The daemon's logging pipeline with a limiter on a test clock; restored after."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access_level = logging.getLogger("aiohttp.access").level
    stream, ring, clock = io.StringIO(), LogRing(), Clock()
    configure_logging(
        redactor=Redactor(),
        ring=ring,
        stream=stream,
        json_lines=True,
        limiter=LogLimiter(clock=clock),
    )
    try:
        yield Logs(stream, ring, clock)
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("aiohttp.access").setLevel(access_level)


def test_h05_ten_thousand_identical_warnings_are_a_burst_and_one_summary(logs: Logs) -> None:
    for number in range(10_000):
        logs.log.warning("webhook.bad_signature", remote="203.0.113.9", number=number)
    assert logs.events() == ["webhook.bad_signature"] * LOG_BURST
    assert logs.lines()[0]["number"] == 0  # the first occurrence is never dropped
    assert len(logs.ring.tail(20_000)) == LOG_BURST  # !logs and bot_logs see the same
    logs.clock.now += LOG_WINDOW_S
    logs.log.info("turn.done", room="dmroom01")
    summary = logs.lines()[LOG_BURST]
    assert summary["event"] == "log.suppressed"
    assert summary["level"] == "warning"
    assert (summary["similar"], summary["count"]) == (
        "webhook.bad_signature",
        10_000 - LOG_BURST,
    )
    assert logs.events()[LOG_BURST + 1 :] == ["turn.done"]


def test_h05_a_new_window_lets_the_event_through_again(logs: Logs) -> None:
    for _ in range(LOG_BURST + 5):
        logs.log.warning("webhook.too_large")
    logs.clock.now += LOG_WINDOW_S
    logs.log.warning("webhook.too_large")
    assert logs.events()[LOG_BURST:] == ["log.suppressed", "webhook.too_large"]
    assert logs.lines()[LOG_BURST]["count"] == 5


def test_h05_different_errors_are_never_merged(logs: Logs) -> None:
    for _ in range(1000):
        logs.log.error("talk.send_failed", room="grouproom1")
    logs.log.error("store.commit_failed", reason="disk full")
    logs.log.warning("talk.send_failed", room="grouproom1")  # another level: its own count
    assert logs.events()[LOG_BURST:] == ["store.commit_failed", "talk.send_failed"]


def test_h05_a_burst_below_the_limit_is_written_in_full(logs: Logs) -> None:
    for number in range(LOG_BURST):
        logs.log.info("turn.done", number=number)
    logs.clock.now += LOG_WINDOW_S
    logs.log.info("turn.done", number=LOG_BURST)
    assert [line["number"] for line in logs.lines()] == list(range(LOG_BURST + 1))


def test_h05_library_records_are_limited_too(logs: Logs) -> None:
    server = logging.getLogger("aiohttp.server")
    for number in range(1000):
        server.error("Error handling request from %s", f"10.0.0.{number % 250}")
    written = logs.stream.getvalue().splitlines()  # the standard library's own format
    assert len(written) == LOG_BURST
    assert "Error handling request from 10.0.0.0" in written[0]
    logs.clock.now += LOG_WINDOW_S
    logs.log.info("turn.done")
    summary = json.loads(logs.stream.getvalue().splitlines()[LOG_BURST])
    assert (summary["event"], summary["level"], summary["count"]) == (
        "log.suppressed",
        "error",
        1000 - LOG_BURST,
    )
    assert summary["similar"] == "aiohttp.server: Error handling request from %s"
