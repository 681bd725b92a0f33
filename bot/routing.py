"""What an event is (command, confirmation answer, chat turn, or nothing): pure decisions."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from enum import StrEnum

from bot.access import at_least
from bot.config import AccessSettings, ChatSettings, ConfirmSettings, Role
from bot.talk.events import Event

# Commands anyone with a role may use in any room (DESIGN.md §7).
ROOM_COMMANDS = frozenset({"help", "jobs", "usage", "forget", "mode"})
# Of those, the ones that change the room: its moderators and admins only.
MODERATOR_COMMANDS = frozenset({"forget", "mode"})
COMMAND_PATTERN = re.compile(r"^(?P<name>[A-Za-z][A-Za-z_-]*)(?:\s+(?P<args>.*))?$", re.DOTALL)
THUMBS_UP = frozenset({"👍", "👍🏻", "👍🏼", "👍🏽", "👍🏾", "👍🏿"})
THUMBS_DOWN = frozenset({"👎", "👎🏻", "👎🏼", "👎🏽", "👎🏾", "👎🏿"})


class RouteKind(StrEnum):
    IGNORE = "ignore"
    MEMBERSHIP = "membership"  # Join / Leave: update the room registry
    ADMIN_COMMAND = "admin_command"
    ROOM_COMMAND = "room_command"
    REFUSE_COMMAND = "refuse_command"
    CONFIRM = "confirm"  # the requester said yes (code may choose among several)
    DENY = "deny"  # the requester said no
    NOT_REQUESTER = "not_requester"  # someone else answered a pending prompt
    REACTION = "reaction"  # a Like/Undo while prompts wait: `code` if it answers one (#13.7)
    CHAT = "chat"
    REMEMBER = "remember"  # not a turn, but worth keeping as context (file shares)
    MEMBER_LEFT = "member_left"  # a person left the room: their jobs there pause (#13.4)


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    command: str = ""
    args: str = ""
    code: str | None = None
    reason: str = ""
    cancels_pending: bool = False  # a new turn from a requester who had a pending action
    # The event is redone after a crash (its first run may have got far: a turn paused).
    redone: bool = False


class Lane(StrEnum):
    """How an accepted event waits in the dispatcher (H02, #14.2)."""

    NOW = "now"  # no turn: cheap store writes, done on arrival, never behind a turn
    CHAT = "chat"  # a model turn: waits for the room; counts against its caps
    KEEP = "keep"  # an answer, command or notice: waits for the room; never crowded out


# Nothing the bot answers: kept as context or in the room registry, in arrival order.
NOW_ROUTES = frozenset({RouteKind.IGNORE, RouteKind.REMEMBER, RouteKind.MEMBERSHIP})


def lane(route: Route) -> Lane:
    """Only chat turns are capped: a yes, a no or a command is never dropped for others."""
    if route.kind in NOW_ROUTES:
        return Lane.NOW
    if route.kind is RouteKind.ROOM_COMMAND and route.command == "mode":
        return Lane.NOW  # at once: the messages after it are triaged under the new mode
    return Lane.CHAT if route.kind is RouteKind.CHAT else Lane.KEEP


@dataclass(frozen=True)
class Triage:
    """An event classified before it waits: routed again when its turn comes."""

    event: Event
    role: Role
    route: Route
    # Started before and cut off (resumed after a restart): what it stored then, such as
    # its history row, may be there already.
    redone: bool = False

    @property
    def lane(self) -> Lane:
        return lane(self.route)

    @property
    def sender(self) -> str:
        return self.event.actor.id


@dataclass(frozen=True)
class PendingRef:
    """What routing needs to know of an open confirmation in the room."""

    code: str
    requester: str
    prompt: str = ""  # the exact prompt text posted for it ("" until it is posted)


@dataclass(frozen=True)
class RoutingPolicy:
    access: AccessSettings
    chat: ChatSettings
    confirm: ConfirmSettings
    bot_actor_id: str


def classify(
    event: Event,
    *,
    role: Role,
    policy: RoutingPolicy,
    room_mode: str | None = None,
    pending: tuple[PendingRef, ...] = (),
) -> Route:
    """Decide what to do with one event; no I/O, table-tested."""
    if event.type != "Create" or event.message is None:
        return _not_a_message(event, role, policy, pending)
    if role == "none":
        return _ignore("no role")
    text = event.message.text.strip()
    if command := _command(text, policy.access.command_prefix):
        return _route_command(event, role, policy, *command)
    if pending and (answer := _pending_answer(event, text, policy.confirm, pending)):
        return answer
    if not _is_addressed(event, text, policy, room_mode):
        return _ignore("not addressed to the bot")
    return Route(RouteKind.CHAT)


def _not_a_message(
    event: Event, role: Role, policy: RoutingPolicy, pending: tuple[PendingRef, ...]
) -> Route:
    if event.type in ("Join", "Leave"):
        return Route(RouteKind.MEMBERSHIP)
    if event.type in ("Like", "Undo"):
        return reaction_route(event, policy, pending) if pending else _ignore("reaction")
    if event.type == "Activity":
        return _activity(event, role)
    return _ignore(f"event type {event.type}")


def _pending_answer(
    event: Event, text: str, confirm: ConfirmSettings, pending: tuple[PendingRef, ...]
) -> Route | None:
    answer = _confirmation_answer(event, text, confirm, pending)
    if answer is None and _is_requester(event, pending):
        # Anything else from the requester ends the wait and is a new turn (§5).
        return Route(RouteKind.CHAT, cancels_pending=True)
    return answer


def _ignore(reason: str) -> Route:
    return Route(RouteKind.IGNORE, reason=reason)


def _activity(event: Event, role: Role) -> Route:
    message = event.message
    if message is not None and (gone := message.removed_actor):
        return Route(RouteKind.MEMBER_LEFT, args=gone)  # whoever removed them: any role
    if message is not None and message.files and role != "none":
        return Route(RouteKind.REMEMBER)
    return _ignore("system message")


def _command(text: str, prefix: str) -> tuple[str, str] | None:
    if not text.startswith(prefix):
        return None
    match = COMMAND_PATTERN.match(text[len(prefix) :])
    if match is None:
        return None
    return match["name"].lower(), (match["args"] or "").strip()


def _route_command(event: Event, role: Role, policy: RoutingPolicy, name: str, args: str) -> Route:
    in_admin_room = bool(policy.access.admin_room) and event.room.token == policy.access.admin_room
    if in_admin_room and role == "admin":
        return Route(RouteKind.ADMIN_COMMAND, command=name, args=args)
    if name in ROOM_COMMANDS:
        if name in MODERATOR_COMMANDS and not (event.actor.is_moderator or role == "admin"):
            return Route(RouteKind.REFUSE_COMMAND, command=name, reason="moderators only")
        return Route(RouteKind.ROOM_COMMAND, command=name, args=args)
    reason = "not an admin" if not at_least(role, "admin") else "not the admin room"
    return Route(RouteKind.REFUSE_COMMAND, command=name, reason=reason)


def _words(text: str) -> list[str]:
    stripped = text.strip().strip(string.punctuation + " ").casefold()
    return stripped.split()


def _confirmation_answer(
    event: Event, text: str, confirm: ConfirmSettings, pending: tuple[PendingRef, ...]
) -> Route | None:
    words = _words(text)
    if not words or len(words) > 2:  # noqa: PLR2004 - "yes" or "yes CODE"
        return None
    yes = {w.casefold() for w in confirm.yes_words}
    no = {w.casefold() for w in confirm.no_words}
    head = words[0]
    if head not in yes and head not in no:
        return None
    code = words[1].upper() if len(words) == 2 else None  # noqa: PLR2004 - see above
    if len(words) == 2 and not any(p.code == code for p in pending):  # noqa: PLR2004
        return None
    if not _is_requester(event, pending, code):
        return Route(RouteKind.NOT_REQUESTER, code=code)
    return Route(RouteKind.CONFIRM if head in yes else RouteKind.DENY, code=code)


def _is_requester(event: Event, pending: tuple[PendingRef, ...], code: str | None = None) -> bool:
    return any(p.requester == event.actor.id and (code is None or p.code == code) for p in pending)


def _is_addressed(event: Event, text: str, policy: RoutingPolicy, room_mode: str | None) -> bool:
    # Every room follows one rule (DESIGN.md §4): a one-to-one room is two people talking
    # to each other, so its JSON-list name changes nothing; `!mode all` makes a private chat.
    mode = room_mode or policy.chat.respond_in_groups
    if mode == "all":
        return True
    return names_bot(text, policy.chat.bot_name) or _replies_to_bot(event, policy)


def names_bot(text: str, bot_name: str) -> bool:
    """The bot's name as a word, any case, with or without a leading @."""
    pattern = rf"(?<![\w@])@?{re.escape(bot_name)}(?!\w)"
    return re.search(pattern, text, re.IGNORECASE) is not None


def _replies_to_bot(event: Event, policy: RoutingPolicy) -> bool:
    reply = event.message.in_reply_to if event.message else None
    if reply is None or not reply.actor.is_bot:
        return False
    if reply.actor.id == policy.bot_actor_id:
        return True
    # The installed URL may differ from public_url (a proxy); fall back on the bot's name.
    return reply.actor.name.casefold() == f"{policy.chat.bot_name} (bot)".casefold()


def reaction_answer(reaction: str | None) -> RouteKind | None:
    """👍 approves, 👎 denies; any other emoji is no answer."""
    if reaction in THUMBS_UP:
        return RouteKind.CONFIRM
    if reaction in THUMBS_DOWN:
        return RouteKind.DENY
    return None


def reaction_route(event: Event, policy: RoutingPolicy, pending: tuple[PendingRef, ...]) -> Route:
    """A Like/Undo while prompts wait (#13.7, I08): the prompt it answers, or why none.

    A 👍/👎 answers only where Talk names who reacted (Talk 23: ``Event.reactor``) and
    only on the bot's own prompt. Up to Talk 22 the actor is the reacted message's author:
    a person there means the message is not the bot's (a pasted copy of a prompt names
    its writer, whoever reacted), and the bot there means nobody knows who reacted.
    Talk 23 names the reactor but not the author, and posting returns no message id, so
    the message is the prompt when its text is exactly the prompt text the bot recorded.
    The route's ``code`` names the prompt; whether the reactor is its requester is
    decided with the action, as for a yes-word (A05). Without ``code``, ``reason`` says
    why the reaction answers nothing: it neither approves nor cancels.
    """
    reason = _reaction_refusal(event, policy)
    if reason:
        return Route(RouteKind.REACTION, reason=reason)
    text = event.message.text.strip() if event.message else ""
    for ref in pending:
        if ref.prompt and text == ref.prompt.strip():
            return Route(RouteKind.REACTION, code=ref.code)
    return Route(RouteKind.REACTION, reason="the reacted message is no waiting prompt")


def _reaction_refusal(event: Event, policy: RoutingPolicy) -> str:
    if event.type != "Like":
        return "removing a reaction answers nothing"
    if reaction_answer(event.reaction) is None:
        return "not 👍 or 👎"
    if event.message is None:
        return "no reacted message"
    return "" if event.reactor is not None else _unnamed_reactor(event, policy)


def _unnamed_reactor(event: Event, policy: RoutingPolicy) -> str:
    # No reacting person named: the Talk <= 22 shape, whose actor is the message's author.
    # Its id alone tells the bot's prompt from anything else; a name proves nothing.
    if event.actor.id == policy.bot_actor_id:
        return "the bot's own reaction, or one on its message where Talk <= 22 hides who"
    if event.actor.is_bot:
        return "a bot's reaction, or one on another bot's message"
    return "Talk <= 22: the reacted message was written by a person, not the bot"
