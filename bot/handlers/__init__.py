"""What the bot does with an event: ``router`` classifies it and hands it to the handler
its route maps to: ``admin`` and ``room_commands`` (commands), ``confirm`` (answers to
pending actions, and chat turns, settled by ``approvals``). This module only re-exports
the router."""

from bot.handlers.router import Router

__all__ = ["Router"]
