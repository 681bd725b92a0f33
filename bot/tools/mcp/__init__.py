"""Tools from MCP servers (``[[mcp.servers]]``), under talkbot's roles, confirmations and
injection policy. The client is the official ``mcp`` SDK (the ``mcp`` extra).

Each server is a connection owned by one task (the SDK's anyio scopes must be left by the
task that entered them): it connects (stdio: starts the process; HTTP: streamable HTTP),
lists the tools, and waits until the server goes away, then retries with a backoff
(1 s doubling to 60 s). A server that fails never holds the daemon: its tools are simply
not offered until it is back, and ``!tools``, ``!status``, ``/readyz`` and ``talkbot
check`` say why.

A server's tool ``t`` becomes the tool ``<server>__t`` with the server's JSON schema; the
arguments are validated against it before the call (a bad call is a tool result the model
can read). What a tool is, for the gate (docs/threat-model.md), comes from its MCP
annotations, and what is not annotated is assumed to be the riskier kind:

- it writes (``readOnlyHint`` not true, or ``destructiveHint`` true): it changes state, and
  its arguments leave the room (a note others read); under ``confirm = "writes"`` every
  call needs the requester's yes;
- ``openWorldHint`` not false: it reaches the world outside; its arguments leave (egress);
- every result is someone else's text (untrusted: it taints the turn), and a closed-world
  tool's result is also the organisation's private data.

Results are text (non-text parts become a note), capped, and headed with where they
come from. Secrets in ``env`` and ``headers`` are redactor secrets; the model sees none.
"""

from bot.tools.mcp.convert import (
    Kinds,
    arguments_model,
    exposed_name,
    kinds_of,
    offered_roles,
    offered_schema,
    result_text,
    selected,
)
from bot.tools.mcp.server import McpServer
from bot.tools.mcp.servers import McpTools, probe

__all__ = [
    "Kinds",
    "McpServer",
    "McpTools",
    "arguments_model",
    "exposed_name",
    "kinds_of",
    "offered_roles",
    "offered_schema",
    "probe",
    "result_text",
    "selected",
]
