"""What the bot does with an event: ``router`` classifies it and hands it to ``admin``
(commands), ``confirm`` (answers to pending actions) or ``chat`` (a turn with the model).
This module only re-exports the router."""

from bot.handlers.router import EventHandler

__all__ = ["EventHandler"]
