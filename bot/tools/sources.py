"""Where tools come from besides talkbot itself: the state of each MCP server, as
``!tools``, ``!status`` and ``/readyz`` show it (bot/tools/mcp/ fills it; this module
does not import the MCP SDK, so what shows it needs none)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SourceState = Literal["connecting", "ready", "failed", "stopped"]


@dataclass(frozen=True)
class ServerState:
    """One MCP server: its state since when, why it failed, the tools it gives."""

    name: str
    transport: Literal["stdio", "http"]
    state: SourceState
    since: float
    reason: str = ""
    tools: tuple[str, ...] = ()  # the names the model sees
    retry_in_s: float | None = None
    restarts: int = 0
