"""The router: parse an inbox event, classify it, then hand it to the handler its route
kind maps to (the dispatcher calls its ``triage``, ``act`` and ``handle_item``).

The route table is built once, by the composition root (``app.py``), and given to the
constructor; the router itself only keeps the room registry and the room's history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import structlog

from bot import i18n
from bot.access import Access
from bot.agent.history import History, message_entry
from bot.config import Role
from bot.directory import Directory
from bot.handlers.chat import ChatHandler
from bot.routing import PendingRef, Route, RouteKind, RoutingPolicy, Triage, classify
from bot.store import HistoryEntry, InboxItem, Store
from bot.talk.events import Event, parse_event

log = structlog.get_logger(__name__)

# A handler for one route kind: (event, role, route) -> None; named ``on_<route>``.
RouteHandler = Callable[[Event, Role, Route], Awaitable[None]]
# The confirmations waiting in a room, for routing to recognise answers to them.
PendingLookup = Callable[[str], Awaitable[tuple[PendingRef, ...]]]
# Whether the router may be sure, without the store, that no confirmation waits in a room.
NoneWaiting = Callable[[str], bool]
# Routes that need nothing but their history row (NOW lane, no handler).
SETTLED_ROUTES = frozenset({RouteKind.IGNORE, RouteKind.REMEMBER})


@dataclass(frozen=True)
class Settled:
    """An event decided on arrival (#19): nothing to answer and nothing to queue; stored
    finished together with its history row (None: not kept as history)."""

    history: HistoryEntry | None
    trim_to: int | None = None  # the room's history is trimmed to this many rows with it
    # A chat turn instead: settled only if the room has no place for it (stored dropped);
    # else queued as usual, with this triage.
    turn: bool = False
    triage: Triage | None = None


class Router:
    """The dispatcher's ``triage``, ``act`` and ``handle_item``: parse, route, act."""

    def __init__(
        self,
        *,
        store: Store,
        access: Access,
        policy: RoutingPolicy,
        history: History,
        chat: ChatHandler,
        routes: Mapping[RouteKind, RouteHandler],
        pending: PendingLookup,
        greeting: str = "",
        directory: Directory | None = None,
        language: Callable[[], str] = lambda: i18n.DEFAULT,
        none_waiting: NoneWaiting = lambda _room: False,
        shared: bool = False,
    ) -> None:
        self._store = store
        self._access = access
        self._directory = directory
        self._language = language
        self.policy = policy
        self._history = history
        self._chat = chat
        self._routes = dict(routes)
        self._pending = pending
        self.greeting = greeting
        self._none_waiting = none_waiting
        # With replicas any event may be redone by a room's new holder while the replica
        # that first ran it, stalled, still records it: every message is recorded once.
        self._shared = shared
        self._rooms_seen: dict[str, tuple[str, bool]] = {}
        # Each room's mode as triage last read it; a room command forgets it (!mode).
        self._modes: dict[str, str | None] = {}

    async def triage(self, item: InboxItem, parsed: Event | None = None) -> Triage:
        """Classify without acting (parse, role, the room's mode, its waiting prompts): no
        model, no Talk call. The dispatcher asks it as an event arrives (H02); ``parsed``
        is the event as the webhook read it from the same body, when it did."""
        event = parse_event(item.body) if parsed is None else parsed
        if self._directory is not None:  # the person's groups, waited for a moment at most
            await self._directory.ensure_actor(event.actor.id)
        role = self._access.role_of(event.actor.id)
        room = await self._store.get_room(event.room.token)
        if room is not None:
            self._modes[room.token] = room.mode
        pending = await self._pending(event.room.token)
        route = classify(
            event,
            role=role,
            policy=self.policy,
            room_mode=room.mode if room else None,
            pending=pending,
        )
        return Triage(event, role, route, redone=item.attempts > 0)

    async def handle_item(self, item: InboxItem) -> None:
        """An event whose turn came: routed by the room as it is now, not as it arrived
        (a yes queued as an answer may find its action cancelled or expired)."""
        await self.act(await self.triage(item))

    async def act(self, triaged: Triage) -> None:
        """Do what the route says; the dispatcher calls it at once for the NOW lane."""
        event, role, route = triaged.event, triaged.role, triaged.route
        self.speak_to(event.actor.id)
        await self._remember_room(event)
        # Most events in a busy room are nothing for the bot: those only at debug level.
        level = log.debug if route.kind is RouteKind.IGNORE else log.info
        level("event.routed", type=event.type, route=route.kind.value, actor_role=role)
        if route.kind is RouteKind.MEMBERSHIP:
            await self._on_membership(event)
            return
        if route.kind in (RouteKind.CHAT, RouteKind.IGNORE, RouteKind.REMEMBER):
            await self._record(event, role, once=triaged.redone or self._shared)
        handler = self._routes.get(route.kind)
        if handler is None:
            return
        changes_room = route.kind in (RouteKind.ROOM_COMMAND, RouteKind.ADMIN_COMMAND)
        if changes_room:
            self._modes.pop(event.room.token, None)  # it may change the room's mode
        if triaged.redone:
            route = replace(route, redone=True)
        try:
            await handler(event, role, route)
        finally:
            if changes_room:  # read again by the next triage, whatever the handler did
                self._modes.pop(event.room.token, None)

    def settle_now(self, event: Event) -> Settled | None:
        """Decide at once, with no store read and no wait, that an event needs nothing
        but its history row; None when that cannot be known so (the event is triaged as
        usual). Only from what this process knows for sure: the room as last read and
        written here, its person's role without asking Nextcloud, no confirmation waiting
        (the caller knows whether this process is the store's only writer)."""
        token = event.room.token
        if not self._known_at_once(event):
            return None
        role = self._access.role_of(event.actor.id)
        route = classify(
            event, role=role, policy=self.policy, room_mode=self._modes[token], pending=()
        )
        if route.kind is RouteKind.CHAT:
            return Settled(None, turn=True, triage=Triage(event, role, route))
        if route.kind not in SETTLED_ROUTES:
            return None
        entry = self.history_entry(event, role)
        return Settled(entry, self._history.trim_due(token) if entry is not None else None)

    def _known_at_once(self, event: Event) -> bool:
        token = event.room.token
        return (
            token in self._modes
            # new or renamed: the room registry has a write to do
            and self._rooms_seen.get(token) == (event.room.name, event.room.is_one_to_one)
            and (self._directory is None or self._directory.answers_at_once(event.actor.id))
            and self._none_waiting(token)
        )

    def settled(self, event: Event, settled: Settled) -> None:
        """The settled event is stored: its history row counts towards the next trim."""
        if settled.history is not None:
            self._history.counted(event.room.token, trimmed=settled.trim_to is not None)

    def speak_to(self, actor_id: str) -> None:
        """Everything said for this event from here on is in the actor's language: their
        Nextcloud language when known, else ``[chat] language``."""
        known = self._directory.language_of_actor(actor_id) if self._directory else None
        i18n.set_language(known or self._language())

    async def _remember_room(self, event: Event) -> None:
        if event.type in ("Join", "Leave") or not event.room.token:
            return
        seen = (event.room.name, event.room.is_one_to_one)
        if self._rooms_seen.get(event.room.token) == seen:
            return  # written already by this process; a rename writes again
        await self._store.record_room(
            event.room.token, name=event.room.name, one_to_one=event.room.is_one_to_one
        )
        self._rooms_seen[event.room.token] = seen

    async def _record(self, event: Event, role: Role, *, once: bool) -> None:
        """The message into the room's history; ``once``: unless it is there already (the
        event is redone after a restart, and its first run may have recorded it)."""
        entry = self.history_entry(event, role)
        if entry is not None:
            await self._history.record_message(event.room.token, entry, once=once)

    @staticmethod
    def history_entry(event: Event, role: Role) -> HistoryEntry | None:
        """A person's message as the room's history keeps it; None for what is not kept
        (other events, people without a role, an Activity without files)."""
        message = event.message
        if event.type not in ("Create", "Activity") or message is None or role == "none":
            return None
        if event.type == "Activity" and not message.files:
            return None
        return message_entry(
            actor_id=event.actor.id,
            actor_name=event.actor.name,
            text=message.text,
            message_id=message.id,
        )

    async def _on_membership(self, event: Event) -> None:
        joined = event.type == "Join"
        await self._store.record_room(
            event.room.token,
            name=event.room.name,
            one_to_one=event.room.is_one_to_one,
            joined=joined,
        )
        log.info("room.joined" if joined else "room.left", room=event.room.token)
        if joined and self.greeting:
            await self._chat.say(event, self.greeting)
