"""What every aggregate of the store shares: the engine it runs on and the clock."""

from __future__ import annotations

from bot.clock import Clock
from bot.store.engine import Engine


class Aggregate:
    """Base of the store's parts; ``Store`` (bot/store/__init__.py) sets both."""

    _engine: Engine
    _clock: Clock
