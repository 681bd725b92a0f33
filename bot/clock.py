"""Time as an injected dependency: wall-clock epoch seconds and a monotonic clock."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (UTC); what is persisted."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; for in-process timeouts."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock tests move by hand; monotonic follows it so deadlines behave."""

    def __init__(self, start: float = 1_780_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    def set(self, when: datetime) -> None:
        delta = when.timestamp() - self._now
        self.advance(delta)
