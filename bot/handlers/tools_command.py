"""``!tools``: the MCP servers' states and the tools each role is offered (#17)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bot.handlers.admin import CommandSpec, utc_text
from bot.i18n import N_, _, ngettext
from bot.talk.events import Event
from bot.tools import Toolbox
from bot.tools.sources import ServerState


class ToolsCommand:
    """``!tools``: each MCP server and its state, and the tools each role is offered."""

    def __init__(
        self, toolbox: Callable[[], Toolbox], sources: Callable[[], Sequence[ServerState]]
    ) -> None:
        self._toolbox = toolbox
        self._sources = sources

    def spec(self) -> CommandSpec:
        return CommandSpec(
            "tools", N_("MCP servers, and the tools each role is offered"), self.overview
        )

    async def overview(self, _event: Event, _args: str) -> str:
        lines = [_("**MCP servers**")]
        states = self._sources()
        lines += [server_line(state) for state in states] or [
            _("- none configured ([[mcp.servers]])")
        ]
        toolbox = self._toolbox()
        lines.append(_("**Offered, by role**"))
        for role in ("guest", "user", "admin"):
            names = [spec["function"]["name"] for spec in toolbox.specs_for(role)]
            shown = ", ".join(f"`{name}`" for name in names) or _("none")
            lines.append(f"- {role}: {shown}")
        asking = [name for name in toolbox.names if (tool := toolbox.get(name)) and tool.confirm]
        if asking:
            shown = ", ".join(f"`{name}`" for name in asking)
            lines.append(_("Always ask the requester first: {names}").format(names=shown))
        return "\n".join(lines)


def server_line(state: ServerState) -> str:
    """One MCP server's state, for ``!tools`` and ``!status``."""
    since = utc_text(state.since)
    if state.state == "ready":
        return ngettext(
            "- `{name}` ({transport}): ready, {count} tool",
            "- `{name}` ({transport}): ready, {count} tools",
            len(state.tools),
        ).format(name=state.name, transport=state.transport, count=len(state.tools))
    if state.state == "failed":
        retry = (
            _("; next try in {seconds} s").format(seconds=round(state.retry_in_s))
            if state.retry_in_s is not None
            else ""
        )
        return _("- `{name}` ({transport}): not connected since {since}: {reason}{retry}").format(
            name=state.name,
            transport=state.transport,
            since=since,
            reason=state.reason,
            retry=retry,
        )
    return _("- `{name}` ({transport}): {state}").format(
        name=state.name, transport=state.transport, state=_(_STATES[state.state])
    )


_STATES = {"connecting": N_("connecting"), "stopped": N_("stopped")} | {
    "ready": N_("ready"),
    "failed": N_("not connected"),
}
