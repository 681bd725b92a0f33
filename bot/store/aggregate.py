"""What every aggregate of the store shares: its engine, the clock, the replica id."""

from __future__ import annotations

from bot.clock import Clock
from bot.store.engine import Engine


class Aggregate:
    """Base of the store's parts; ``Store`` (bot/store/facade.py) sets these."""

    _engine: Engine
    _clock: Clock
    _replica: str  # this process's replica id: the runner of what it approves and runs
