"""Commands in any room: ``!forget``, ``!mode``, ``!help``, the feature groups' own
(``!jobs``, ``!usage``), and the answer to a command the person may not use there."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bot import replies
from bot.agent.history import History
from bot.config import Role
from bot.handlers.admin import Say
from bot.handlers.router import RouteHandler
from bot.routing import Route
from bot.store import Store
from bot.talk.events import Event


class RoomCommands:
    """The ROOM_COMMAND and REFUSE_COMMAND routes; routing already checked who may."""

    def __init__(
        self,
        *,
        store: Store,
        history: History,
        say: Say,
        prefix: Callable[[], str],
        commands: Mapping[str, RouteHandler],  # the feature groups' room commands
    ) -> None:
        self._store = store
        self._history = history
        self._say = say
        self._prefix = prefix
        self._commands = dict(commands)

    async def on_command(self, event: Event, role: Role, route: Route) -> None:
        if route.command in self._commands:
            await self._commands[route.command](event, role, route)
        elif route.command == "forget":
            count = await self._history.forget(event.room.token)
            await self._say(event, replies.forgot(count))
        elif route.command == "mode":
            await self._set_mode(event, route.args.strip().lower())
        else:
            moderator = event.actor.is_moderator or role == "admin"
            await self._say(event, replies.room_help(self._prefix(), moderator=moderator))

    async def _set_mode(self, event: Event, mode: str) -> None:
        if mode not in ("all", "mention"):
            await self._say(event, replies.mode_usage(self._prefix()))
            return
        await self._store.set_room_mode(event.room.token, mode)
        await self._say(event, replies.mode_set(mode))

    async def on_refused(self, event: Event, _role: Role, route: Route) -> None:
        text = replies.command_refused(self._prefix() + route.command, route.reason)
        await self._say(event, text)
