"""Typed, frozen models of the events Talk delivers to a bot, and the parser that builds them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Owner, moderator, guest moderator (S:docs/constants.md participant types).
_MODERATOR_TYPES = frozenset({1, 2, 6})
# "message" for chat messages (and file shares from Talk 23); "" for file shares, polls and
# rich objects up to Talk 22 and for the reacted message inside Like/Undo.
_NON_SYSTEM_NAMES = frozenset({"message", ""})
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z0-9_-]+)\}")
_PARTICIPANT_TYPE_RE = re.compile(r"[0-9]{1,3}")

Parameters = dict[str, dict[str, Any]]


class EventParseError(ValueError):
    """A signed webhook body that is not a Talk event this parser understands."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor:
    """Who caused an event; ``id`` is ``<kind>/<uid>``, the only trustworthy identity."""

    id: str
    type: str = "Person"
    name: str = ""
    participant_type: int | None = None

    @property
    def kind(self) -> str:
        """The prefix before the first "/" ("users", "guests", ...), "" when there is none."""
        kind, sep, _ = self.id.partition("/")
        return kind if sep else ""

    @property
    def uid(self) -> str:
        """Everything after the first "/" (federated ids keep their "@" and "/")."""
        _, _, uid = self.id.partition("/")
        return uid

    @property
    def is_bot(self) -> bool:
        return self.kind == "bots" or self.type == "Application"

    @property
    def is_moderator(self) -> bool:
        """Owner or moderator of the room; only Create events carry this."""
        return self.participant_type in _MODERATOR_TYPES


@dataclass(frozen=True, slots=True, kw_only=True)
class Room:
    """A conversation: its token (used in API paths) and the name Talk sent."""

    token: str
    name: str = ""

    @property
    def is_one_to_one(self) -> bool:
        """Talk names a one-to-one room by the JSON list of its two user ids."""
        if not self.name.startswith("["):
            return False
        try:
            members = json.loads(self.name)
        except (ValueError, RecursionError):
            return False
        return (
            isinstance(members, list)
            and len(members) == 2  # noqa: PLR2004 -- a one-to-one room has exactly two members
            and all(isinstance(member, str) for member in members)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyRef:
    """The message a chat message replies to (Talk 21+)."""

    id: str
    actor: Actor
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A chat or system message; ``text`` has its placeholders rendered."""

    id: str
    text: str = ""
    name: str = "message"
    raw_text: str = ""
    parameters: Parameters = field(default_factory=dict)
    media_type: str = "text/markdown"
    in_reply_to: ReplyRef | None = None

    @property
    def files(self) -> list[dict[str, Any]]:
        return [param for param in self.parameters.values() if param.get("type") == "file"]

    @property
    def removed_actor(self) -> str | None:
        """For a "user_removed" system message (someone left or was removed): the actor id
        of the person who is gone, from its "user" parameter (fixture 017)."""
        user = self.parameters.get("user") if self.name == "user_removed" else None
        if not isinstance(user, dict) or user.get("type") != "user":
            return None
        uid = user.get("id")
        return f"users/{uid}" if isinstance(uid, str) and uid else None

    @property
    def is_system(self) -> bool:
        """True for system messages such as "call_started" or "reaction_revoked"."""
        return self.name not in _NON_SYSTEM_NAMES


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One webhook delivery: Create, Activity, Like, Undo, Join, Leave or a future type."""

    type: str
    actor: Actor
    room: Room
    message: Message | None = None
    reaction: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def reactor(self) -> Actor | None:
        """Who reacted, for a Like or Undo that says so; None where Talk does not.

        From Talk 23 the actor is the reacting attendee, with ``talkParticipantType``. Up
        to Talk 22 it is the reacted message's author and never has one (fixtures 010, 049;
        protocol §2), so who reacted is unknown. Bots never carry a participant type.
        """
        if self.type not in {"Like", "Undo"} or self.actor.is_bot:
            return None
        return self.actor if self.actor.participant_type is not None else None

    @property
    def talk_message_number(self) -> int | None:
        """The Talk id of the message a Create or Activity carries (ids only grow), for
        the store's replay floor; None for other events and for ids that are no number."""
        if self.type not in {"Create", "Activity"} or self.message is None:
            return None
        return (
            int(self.message.id)
            if self.message.id.isascii() and self.message.id.isdigit()
            else None
        )

    @property
    def dedupe_key(self) -> str | None:
        """Identity of a repeated delivery; None where only the random can tell."""
        if self.message is None:
            return None
        if self.type in {"Create", "Activity"}:
            return message_key(self.type, self.room.token, self.message.id)
        if self.type in {"Like", "Undo"}:
            return (
                f"{self.type}:{self.room.token}:{self.actor.id}:{self.message.id}:{self.reaction}"
            )
        return None


def message_key(kind: str, room: str, message_id: str) -> str:
    """The dedupe key of a delivered Create or Activity: Talk never delivers a bot's own
    messages to it, so a message with such a key was written by a person."""
    return f"{kind}:{room}:{message_id}"


# Ids Talk resolves after a bare "@"; anything else needs the quoted form @"...".
_PLAIN_MENTION_RE = re.compile(r"[A-Za-z0-9_.\-]+")


def bot_actor_id(webhook_url: str) -> str:
    """The actor id Talk gives the bot installed with exactly this URL."""
    digest = hashlib.sha1(webhook_url.encode("utf-8"), usedforsecurity=False).hexdigest()
    return f"bots/bot-{digest}"


def render_text(raw_text: str, parameters: Parameters) -> str:
    """Replace ``{placeholder}``s with readable text; unknown placeholders stay as they are."""

    def replace(match: re.Match[str]) -> str:
        param = parameters.get(match.group(1))
        label = None if param is None else _label(match.group(1), param)
        return match.group(0) if label is None else label

    return _PLACEHOLDER_RE.sub(replace, raw_text)


def _label(key: str, param: dict[str, Any]) -> str | None:
    if not key.startswith("mention-"):
        return _first_text(param, ("name", "id"))
    # A mention is rendered as Talk's own mention syntax for its id ("@all", "@bob",
    # '@"group/dev team"'), never from the display name: the model repeats what it reads,
    # and Talk resolves "@Bob B." in an answer to the user id "Bob", somebody else.
    mention_id = _first_text(param, ("mention-id", "id"))
    if mention_id is not None:
        return "@" + (mention_id if _PLAIN_MENTION_RE.fullmatch(mention_id) else f'"{mention_id}"')
    # No id to keep: the name alone, without the "@" that would make it a mention.
    return _first_text(param, ("name",))


def _first_text(param: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = param.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def parse_event(raw_body: bytes) -> Event:
    """Parse a verified webhook body; any malformed input raises EventParseError."""
    try:
        text = raw_body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventParseError("body is not UTF-8") from exc
    body = _decode_object(text, "body")
    event_type = _text(body, "type", "body", required=True)
    actor = _parse_actor(_object(body, "actor", "body"), "actor")
    room, message, reaction = _BUILDERS.get(event_type, _build_unknown)(body)
    return Event(
        type=event_type, actor=actor, room=room, message=message, reaction=reaction, raw=body
    )


_Parts = tuple[Room, Message | None, str | None]


def _build_note(body: dict[str, Any]) -> _Parts:
    room = _parse_room(_object(body, "target", "body"), "target")
    return room, _parse_message(_object(body, "object", "body"), "object"), None


def _build_like(body: dict[str, Any]) -> _Parts:
    room = _parse_room(_object(body, "target", "body"), "target")
    message = _parse_message(_object(body, "object", "body"), "object")
    return room, message, _text(body, "content", "body", required=True)


def _build_undo(body: dict[str, Any]) -> _Parts:
    room = _parse_room(_object(body, "target", "body"), "target")
    like = _object(body, "object", "body")
    message = _parse_message(_object(like, "object", "object"), "object.object")
    return room, message, _text(like, "content", "object", required=True)


def _build_membership(body: dict[str, Any]) -> _Parts:
    return _parse_room(_object(body, "object", "body"), "object"), None, None


def _build_unknown(body: dict[str, Any]) -> _Parts:
    target = body.get("target")
    if isinstance(target, dict):
        return _parse_room(target, "target"), None, None
    collection = body.get("object")
    if isinstance(collection, dict) and collection.get("type") == "Collection":
        return _parse_room(collection, "object"), None, None
    return Room(token="", name=""), None, None


_BUILDERS: dict[str, Callable[[dict[str, Any]], _Parts]] = {
    "Create": _build_note,
    "Activity": _build_note,
    "Like": _build_like,
    "Undo": _build_undo,
    "Join": _build_membership,
    "Leave": _build_membership,
}


def _parse_actor(data: dict[str, Any], where: str) -> Actor:
    actor_id = _text(data, "id", where, required=True)
    if not actor_id:
        raise EventParseError(f"{where}.id is empty")
    return Actor(
        id=actor_id,
        type=_text(data, "type", where),
        name=_text(data, "name", where),
        participant_type=_participant_type(data.get("talkParticipantType"), where),
    )


def _participant_type(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _PARTICIPANT_TYPE_RE.fullmatch(value):
        return int(value)
    raise EventParseError(f"{where}.talkParticipantType is not a number")


def _parse_room(data: dict[str, Any], where: str) -> Room:
    token = _text(data, "id", where, required=True)
    if not token:
        raise EventParseError(f"{where}.id is empty")
    return Room(token=token, name=_text(data, "name", where))


def _parse_message(data: dict[str, Any], where: str) -> Message:
    raw_text, parameters = _parse_content(data, where)
    return Message(
        id=_message_id(data, where),
        text=render_text(raw_text, parameters),
        name=_text(data, "name", where),
        raw_text=raw_text,
        parameters=parameters,
        media_type=_text(data, "mediaType", where),
        in_reply_to=_parse_reply(data.get("inReplyTo"), f"{where}.inReplyTo"),
    )


def _parse_reply(value: object, where: str) -> ReplyRef | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EventParseError(f"{where} is not an object")
    note = _object(value, "object", where)
    raw_text, parameters = _parse_content(note, f"{where}.object")
    return ReplyRef(
        id=_message_id(note, f"{where}.object"),
        actor=_parse_actor(_object(value, "actor", where), f"{where}.actor"),
        text=render_text(raw_text, parameters),
    )


def _parse_content(note: dict[str, Any], where: str) -> tuple[str, Parameters]:
    content = _decode_object(_text(note, "content", where, required=True), f"{where}.content")
    raw_text = _text(content, "message", f"{where}.content")
    return raw_text, _parse_parameters(content.get("parameters"), f"{where}.content")


def _parse_parameters(value: object, where: str) -> Parameters:
    # PHP encodes an empty array as [], so [] and {} both mean "no parameters".
    if value is None or value == []:
        return {}
    if not isinstance(value, dict):
        raise EventParseError(f"{where}.parameters is not an object")
    parameters: Parameters = {}
    for key, param in value.items():
        if param == []:
            parameters[key] = {}
        elif isinstance(param, dict):
            parameters[key] = param
        else:
            raise EventParseError(f"{where}.parameters.{key} is not an object")
    return parameters


def _message_id(data: dict[str, Any], where: str) -> str:
    value = data.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    raise EventParseError(f"{where}.id is missing or not a string")


def _decode_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise EventParseError(f"{where} is not JSON") from exc
    if not isinstance(value, dict):
        raise EventParseError(f"{where} is not a JSON object")
    if "\\ud" in text.lower():
        _refuse_lone_surrogates(value, where)
    return value


def _refuse_lone_surrogates(value: dict[str, Any], where: str) -> None:
    """JSON can escape half an emoji; Talk never does, and such text cannot be stored."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise EventParseError(f"{where} has a lone surrogate escape") from None


def _object(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise EventParseError(f"{where}.{key} is missing or not an object")
    return value


def _text(data: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise EventParseError(f"{where}.{key} is missing or not a string")
    return value
