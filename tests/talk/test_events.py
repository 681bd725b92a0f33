"""Parsing Talk webhook bodies into events (matrix W10, W11, W12), on real captures first."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.talk.events import (
    Actor,
    Event,
    EventParseError,
    Room,
    bot_actor_id,
    parse_event,
)
from tests.talk.fixtures import (
    CAPTURE_URL,
    INLINE_URL,
    CapturedWebhook,
    all_webhooks,
    load_webhook,
)

WEBHOOKS = all_webhooks()
CAPTURE_BOT = "bots/bot-ddee2042045a19a004e09b8fd083b7e9b5ab8431"
ROOM = {"type": "Collection", "id": "n3xtc10ud", "name": "ops"}
ALICE = {"type": "Person", "id": "users/alice", "name": "Alice A.", "talkParticipantType": "3"}


def _event(seq: int) -> Event:
    return parse_event(load_webhook(seq).raw_body)


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _note(message: str, parameters: Any = None, **fields: Any) -> dict[str, Any]:
    content = {"message": message, "parameters": [] if parameters is None else parameters}
    note = {"type": "Note", "id": "1568", "name": "message", "content": json.dumps(content)}
    return note | {"mediaType": "text/markdown"} | fields


def _create(note: dict[str, Any]) -> bytes:
    return _body(type="Create", actor=ALICE, object=note, target=ROOM)


def _expected_room_token(body: dict[str, Any]) -> str:
    if body["type"] in {"Join", "Leave"}:
        return str(body["object"]["id"])
    return str(body["target"]["id"])


def _expected_message_id(body: dict[str, Any]) -> str | None:
    if body["type"] in {"Create", "Activity", "Like"}:
        return str(body["object"]["id"])
    if body["type"] == "Undo":
        return str(body["object"]["object"]["id"])
    return None


# --- every real capture ---------------------------------------------------------------


@pytest.mark.parametrize("hook", WEBHOOKS, ids=[hook.stem for hook in WEBHOOKS])
def test_w11_every_captured_webhook_parses(hook: CapturedWebhook) -> None:
    """W11: all six types Talk 21 sent parse; type, room and actor match the capture."""
    event = parse_event(hook.raw_body)
    body = hook.body_json
    assert event.type == body["type"] == hook.type
    assert event.room.token == _expected_room_token(body)
    assert event.actor.id == body["actor"]["id"]
    assert event.raw == body
    message_id = _expected_message_id(body)
    assert (event.message.id if event.message else None) == message_id


def test_plain_message_text_and_fields() -> None:
    event = _event(2)
    assert event.message is not None
    assert event.message.text == "Hello bot, this is a plain message from Alice"
    assert event.message.id == "3"
    assert event.message.parameters == {}
    assert event.message.media_type == "text/markdown"
    assert event.message.in_reply_to is None
    assert not event.message.is_system
    assert event.room == Room(token="ty8naect", name="Bot test room")
    assert event.actor.name == "Alice"
    assert event.dedupe_key == "Create:ty8naect:3"


def test_user_mention_renders_as_the_user_id_talk_resolves() -> None:
    """003: "{mention-user1}" becomes "@alice" (its id, #12.6); the raw text keeps it."""
    message = _event(3).message
    assert message is not None
    assert message.text == "Hi @alice, can you check this?"
    assert message.raw_text == "Hi {mention-user1}, can you check this?"
    assert message.parameters["mention-user1"]["mention-id"] == "alice"


def test_at_all_renders_as_typed_not_as_the_room_name() -> None:
    """004: "{mention-call1}" is "@all", so a room named after the bot is no mention of it."""
    message = _event(4).message
    assert message is not None
    assert message.text == "Attention @all please"


def test_unicode_and_php_escapes_are_decoded() -> None:
    message = _event(6).message
    assert message is not None
    assert "Line 2: ümlaut é 日本語 😀" in message.text
    assert '"quotes" <b>tag</b> & amp \\ backslash / slash' in message.text
    assert message.text.startswith("**bold** _it_ `code`\n")


def test_reply_carries_the_replied_message_and_its_author() -> None:
    """005: bob replies to alice's message 3."""
    reply = _event(5).message
    assert reply is not None
    assert reply.in_reply_to is not None
    assert reply.in_reply_to.id == "3"
    assert reply.in_reply_to.actor.id == "users/alice"
    assert reply.in_reply_to.actor.participant_type is None
    assert reply.in_reply_to.text == "Hello bot, this is a plain message from Alice"


def test_w12_reply_to_a_bot_message_names_the_bot_as_author() -> None:
    """047: the replied-to author is InlineBot, a "Person" whose id starts with bots/."""
    reply = _event(47).message
    assert reply is not None
    assert reply.in_reply_to is not None
    author = reply.in_reply_to.actor
    assert author.id == bot_actor_id(INLINE_URL)
    assert author.name == "InlineBot (Bot)"
    assert author.type == "Person"
    assert author.is_bot


def test_bot_actor_id_is_sha1_of_the_installed_url() -> None:
    assert bot_actor_id("http://127.0.0.1:8099/webhook") == CAPTURE_BOT
    assert bot_actor_id(CAPTURE_URL) == _event(1).actor.id


def test_w12_join_is_by_the_bot_as_an_application() -> None:
    """001/042: Join and Leave name the bot itself, typed "Application"."""
    join = _event(1)
    assert join.actor.type == "Application"
    assert join.actor.is_bot
    assert join.room == Room(token="ty8naect", name="Bot test room")
    assert join.message is None
    assert join.dedupe_key is None
    assert _event(42).actor.id == bot_actor_id(INLINE_URL)
    assert _event(37).type == "Leave"
    assert _event(37).dedupe_key is None


def test_w12_system_message_caused_by_the_bot_has_a_bot_actor() -> None:
    """024: the bot removing its own reaction; actor.type is "Person" but the id is bots/."""
    event = _event(24)
    assert event.actor.id == CAPTURE_BOT
    assert event.actor.type == "Person"
    assert event.actor.is_bot
    assert event.message is not None
    assert event.message.text == "Deleted user deleted a reaction"


def test_like_carries_the_emoji_and_the_reacted_message() -> None:
    """010: on Talk 21 the actor is the reacted message's author (bob), not alice."""
    event = _event(10)
    assert event.reaction == "👍"
    assert event.actor.id == "users/bob"
    assert event.message is not None
    assert event.message.id == "4"
    assert event.message.text == "Hi @alice, can you check this?"
    assert not event.message.is_system
    assert event.dedupe_key == "Like:ty8naect:users/bob:4:👍"


def test_undo_takes_emoji_and_message_from_the_inner_like() -> None:
    """013: the Undo that follows removing the 👍 of 010."""
    event = _event(13)
    assert event.reaction == "👍"
    assert event.message is not None
    assert event.message.id == "4"
    assert event.dedupe_key == "Undo:ty8naect:users/bob:4:👍"
    assert event.dedupe_key != _event(10).dedupe_key


def test_bots_own_reaction_comes_back_as_a_like_and_just_parses() -> None:
    """023/026/049: Like events set off by the bot's own reactions."""
    assert _event(23).actor.id == "users/bob"
    assert _event(26).reaction == "🎉"
    own_message = _event(49)
    assert own_message.actor.id == CAPTURE_BOT
    assert own_message.reaction == "🚀"


def _talk23(seq: int, reactor: dict[str, Any]) -> Event:
    """A captured Like or Undo as Talk 23+ sends it: the reacting attendee is the actor."""
    body = json.loads(load_webhook(seq).raw_body)
    body["actor"] = reactor
    if body["type"] == "Undo":
        body["object"]["actor"] = reactor
    return parse_event(json.dumps(body).encode())


@pytest.mark.parametrize("seq", [10, 11, 13, 23, 25, 26, 49])
def test_i08_talk_21_reactions_do_not_name_who_reacted(seq: int) -> None:
    """#13.7, I08: up to Talk 22 a Like/Undo's actor is the reacted message's author
    (bob in 010 although alice reacted, the bot in 049) and never has a participant type."""
    event = _event(seq)
    assert event.type in {"Like", "Undo"}
    assert event.reactor is None


@pytest.mark.parametrize("seq", [10, 13, 49])
def test_i08_talk_23_reactions_name_the_reacting_attendee(seq: int) -> None:
    """#13.7, I08: from Talk 23 the actor is who reacted, with ``talkParticipantType``."""
    event = _talk23(seq, ALICE)
    assert event.reactor is not None
    assert event.reactor.id == "users/alice"
    assert event.reactor.participant_type == 3


def test_reactor_is_only_for_reactions_and_never_a_bot() -> None:
    """A Create's actor is its author, not a reactor; a bot never carries a participant type,
    so a bot's own reaction names no person either."""
    assert _event(2).reactor is None
    bot = {"type": "Person", "id": CAPTURE_BOT, "name": "CaptureBot", "talkParticipantType": "3"}
    assert _talk23(49, bot).reactor is None


@pytest.mark.parametrize(
    ("seq", "name", "text"),
    [
        (12, "reaction_revoked", "Alice deleted a reaction"),
        (14, "message_edited", "Alice edited a message"),
        (16, "user_added", "Alice added Carol"),
        (20, "moderator_promoted", "Alice promoted Bob to moderator"),
    ],
)
def test_w11_activity_system_messages_are_system_and_readable(
    seq: int, name: str, text: str
) -> None:
    event = _event(seq)
    assert event.type == "Activity"
    assert event.message is not None
    assert event.message.name == name
    assert event.message.is_system
    assert event.message.text == text
    assert event.dedupe_key == f"Activity:ty8naect:{event.message.id}"


def test_poll_share_is_an_activity_but_not_a_system_message() -> None:
    """021: a poll is stored as a system comment with object.name "" (like file shares)."""
    message = _event(21).message
    assert message is not None
    assert message.name == ""
    assert not message.is_system
    assert message.text == "Lunch?"


@pytest.mark.parametrize(("seq", "moderator"), [(2, True), (3, False), (45, True), (28, True)])
def test_participant_type_says_who_moderates_the_room(seq: int, moderator: bool) -> None:
    """002 alice owner "1", 003 bob "3", 045 bob promoted "2", 028 one-to-one owner "1"."""
    assert _event(seq).actor.is_moderator is moderator


def test_participant_type_is_absent_outside_create() -> None:
    assert _event(10).actor.participant_type is None
    assert _event(12).actor.participant_type is None
    assert _event(2).actor.participant_type == 1


# --- rooms ----------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [27, 28, 29])
def test_one_to_one_room_is_recognised_from_its_name(seq: int) -> None:
    """027-029: room c83o7yp2 between alice and bob is named '["alice","bob"]'."""
    room = _event(seq).room
    assert room.token == "c83o7yp2"
    assert room.is_one_to_one


@pytest.mark.parametrize(
    "name",
    [
        "Bot test room",
        '["a"]',
        '["a","b","c"]',
        "[1, 2]",
        '{"a": "b"}',
        "[",
        "[" * 10_000,
        "",
        "Note to self",
    ],
)
def test_other_room_names_are_not_one_to_one(name: str) -> None:
    assert not Room(token="abcd", name=name).is_one_to_one


def test_captured_group_room_is_not_one_to_one() -> None:
    assert not _event(2).room.is_one_to_one


# --- actors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor_id", "kind", "uid"),
    [
        ("users/alice", "users", "alice"),
        ("guests/abc", "guests", "abc"),
        ("emails/x", "emails", "x"),
        (
            "federated_users/alice@remote.example/with/slash",
            "federated_users",
            "alice@remote.example/with/slash",
        ),
        (CAPTURE_BOT, "bots", "bot-ddee2042045a19a004e09b8fd083b7e9b5ab8431"),
        ("admin", "", ""),
        ("users/", "users", ""),
    ],
)
def test_actor_id_splits_on_the_first_slash(actor_id: str, kind: str, uid: str) -> None:
    """A bare "admin" has no kind, so it can never match a users/ role (W13)."""
    actor = Actor(id=actor_id)
    assert (actor.kind, actor.uid) == (kind, uid)


@pytest.mark.parametrize(
    ("actor", "is_bot"),
    [
        (Actor(id="bots/bot-123", type="Person"), True),
        (Actor(id="users/alice", type="Application"), True),
        (Actor(id="users/alice", type="Person"), False),
        (Actor(id="users/bots", type="Person"), False),
        (Actor(id="guests/system", type="Person"), False),
        (Actor(id="bots", type="Person"), False),
    ],
)
def test_w12_bot_actors_are_recognised(actor: Actor, is_bot: bool) -> None:
    assert actor.is_bot is is_bot


def test_federated_actor_keeps_its_full_cloud_id() -> None:
    actor = {"type": "Person", "id": "federated_users/alice@remote.example/nc", "name": ""}
    event = parse_event(_body(type="Create", actor=actor, object=_note("hi"), target=ROOM))
    assert event.actor.kind == "federated_users"
    assert event.actor.uid == "alice@remote.example/nc"
    assert event.actor.name == ""


# --- rendering ------------------------------------------------------------------------

FILE_PARAM = {
    "type": "file", "id": "245", "name": "report.pdf", "size": "11576",
    "path": "Talk/report.pdf", "link": "https://cloud.example/f/245", "etag": "abc",
    "permissions": "27", "mimetype": "application/pdf", "preview-available": "yes",
    "hide-download": "no",
}  # fmt: skip
ACTOR_PARAM = {"type": "user", "id": "alice", "name": "Alice A.", "mention-id": "alice"}


@pytest.mark.parametrize("name", ["", "message"])
def test_file_share_is_an_activity_with_the_file_name_as_text(name: str) -> None:
    """Talk <= 22 sends object.name "", Talk 23 "message" (protocol §2 file share)."""
    params = {"actor": ACTOR_PARAM, "file": FILE_PARAM}
    event = parse_event(
        _body(type="Activity", actor=ALICE, object=_note("{file}", params, name=name), target=ROOM)
    )
    assert event.message is not None
    assert event.message.text == "report.pdf"
    assert event.message.files == [FILE_PARAM]
    assert not event.message.is_system


def test_file_share_with_a_caption_keeps_the_caption_and_the_file() -> None:
    params = {"actor": ACTOR_PARAM, "file": FILE_PARAM}
    event = parse_event(_create(_note("Please review", params)))
    assert event.message is not None
    assert event.message.text == "Please review"
    assert event.message.files[0]["path"] == "Talk/report.pdf"


@pytest.mark.parametrize(
    ("raw_text", "params", "text"),
    [
        ("hi {mention-user1}", {"mention-user1": {"type": "user", "id": "bob"}}, "hi @bob"),
        (
            "hi {mention-user1}",
            {"mention-user1": {"type": "user", "id": "bob", "name": "Bob", "mention-id": "bob"}},
            "hi @bob",
        ),
        (
            "hi {mention-user1}",
            {"mention-user1": {"type": "user", "id": "b.o-b_2", "name": "Bob B."}},
            "hi @b.o-b_2",
        ),
        (
            "hi {mention-group1}",
            {
                "mention-group1": {
                    "type": "user-group",
                    "name": "Dev",
                    "mention-id": "group/dev team",
                }
            },
            'hi @"group/dev team"',
        ),
        (
            "hi {mention-federated-user1}",
            {
                "mention-federated-user1": {
                    "type": "user",
                    "name": "Al",
                    "mention-id": "federated_user/al@r.example",
                }
            },
            'hi @"federated_user/al@r.example"',
        ),
        (  # no id to keep: the name, defused (no "@" Talk would resolve)
            "hi {mention-federated-user1}",
            {"mention-federated-user1": {"type": "user", "name": "Al", "server": "r.example"}},
            "hi Al",
        ),
        (
            "hi {mention-group1}",
            {"mention-group1": {"type": "user-group", "name": ""}},
            "hi {mention-group1}",
        ),
        ("{unknown} stays", {}, "{unknown} stays"),
        ("{mention-user1} no params", [], "{mention-user1} no params"),
        ("{actor} joined", {"actor": []}, "{actor} joined"),
        ("{actor}", {"actor": {"type": "user", "name": "{user}"}, "user": {"name": "X"}}, "{user}"),
        ('json {"a": 1} {}', {}, 'json {"a": 1} {}'),
    ],
)
def test_placeholders_render_once_and_unknown_ones_stay(
    raw_text: str, params: Any, text: str
) -> None:
    message = parse_event(_create(_note(raw_text, params))).message
    assert message is not None
    assert message.text == text


def test_content_without_a_message_gives_empty_text() -> None:
    note = _note("x") | {"content": json.dumps({"parameters": []})}
    message = parse_event(_create(note)).message
    assert message is not None
    assert message.text == ""


def test_parameters_given_as_an_empty_object_parse() -> None:
    message = parse_event(_create(_note("plain", {}))).message
    assert message is not None
    assert message.parameters == {}


# --- unknown and bad payloads ---------------------------------------------------------


def test_w11_unknown_future_event_type_parses_without_a_message() -> None:
    event = parse_event(_body(type="Update", actor=ALICE, object=_note("x"), target=ROOM))
    assert event.type == "Update"
    assert event.room.token == "n3xtc10ud"
    assert event.message is None
    assert event.dedupe_key is None
    bare = parse_event(_body(type="Ping", actor=ALICE))
    assert bare.room.token == ""


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_PAYLOADS = {
    "invalid-utf8": b'{"type":"Create","actor":{"id":"users/\xff"}}',
    "utf16-json": _create(_note("hi")).decode().encode("utf-16"),
    "utf8-bom": b"\xef\xbb\xbf" + _create(_note("hi")),
    "empty": b"",
    "not-json": b"type=Create",
    "json-array": b"[]",
    "json-string": b'"Create"',
    "json-null": b"null",
    "missing-type": _body(actor=ALICE, object=_note("x"), target=ROOM),
    "type-not-string": _body(type=1, actor=ALICE, object=_note("x"), target=ROOM),
    "missing-actor": _body(type="Create", object=_note("x"), target=ROOM),
    "actor-not-object": _body(type="Create", actor="users/alice", object=_note("x"), target=ROOM),
    "missing-actor-id": _body(type="Create", actor={"type": "Person"}, target=ROOM),
    "actor-id-number": _body(type="Join", actor={"id": 5}, object=ROOM),
    "empty-actor-id": _body(type="Join", actor={"id": ""}, object=ROOM),
    "actor-name-list": _body(type="Join", actor={"id": "users/a", "name": []}, object=ROOM),
    "participant-type-word": _create(_note("x")).replace(b'"3"', b'"owner"'),
    "participant-type-huge": _create(_note("x")).replace(b'"3"', b'"' + b"9" * 5000 + b'"'),
    "missing-target-create": _body(type="Create", actor=ALICE, object=_note("x")),
    "missing-target-activity": _body(type="Activity", actor=ALICE, object=_note("x")),
    "missing-target-like": _body(type="Like", actor=ALICE, object=_note("x"), content="👍"),
    "target-without-id": _body(type="Create", actor=ALICE, object=_note("x"), target={}),
    "missing-object": _body(type="Create", actor=ALICE, target=ROOM),
    "join-without-object": _body(type="Join", actor=ALICE),
    "like-without-emoji": _body(type="Like", actor=ALICE, object=_note("x"), target=ROOM),
    "undo-without-like": _body(type="Undo", actor=ALICE, object=_note("x"), target=ROOM),
    "content-not-json": _create(_note("x") | {"content": "Hello {"}),
    "content-json-array": _create(_note("x") | {"content": "[]"}),
    "content-missing": _create({"type": "Note", "id": "1", "name": "message"}),
    "content-object-not-string": _create(_note("x") | {"content": {"message": "x"}}),
    "message-not-string": _create(_note("x") | {"content": '{"message": 5}'}),
    "parameters-list": _create(_note("x", ["a"])),
    "parameter-string": _create(_note("x", {"mention-user1": "alice"})),
    "message-id-missing": _create({"type": "Note", "content": '{"message":"x"}'}),
    "message-id-float": _create(_note("x", id=1.5)),
    "in-reply-to-string": _create(_note("x", inReplyTo="3")),
    "in-reply-to-without-actor": _create(_note("x", inReplyTo={"object": _note("y")})),
    "nesting-10k": _nested(10_000).encode(),
    "object-nesting-10k": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "content-nesting-10k": _create(_note("x") | {"content": _nested(10_000)}),
    "huge-integer": b'{"type":"Join","n":' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("raw_body", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_w10_bad_payload_raises_event_parse_error(raw_body: bytes) -> None:
    """W10: a signed but malformed body is a typed error (the webhook answers 400)."""
    with pytest.raises(EventParseError):
        parse_event(raw_body)


def test_event_parse_error_is_a_value_error() -> None:
    assert issubclass(EventParseError, ValueError)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = ["type", "actor", "id", "name", "object", "target", "content", "message",
        "parameters", "inReplyTo", "talkParticipantType", "mediaType"]  # fmt: skip


def _outcome(raw_body: bytes) -> Event | None:
    try:
        return parse_event(raw_body)
    except EventParseError:
        return None


@given(value=JSON_VALUES)
def test_w10_arbitrary_json_raises_only_event_parse_error(value: Any) -> None:
    result = _outcome(json.dumps(value).encode())
    assert result is None or isinstance(result.raw, dict)


@given(data=st.binary(max_size=64))
def test_w10_arbitrary_bytes_raise_only_event_parse_error(data: bytes) -> None:
    assert _outcome(data) is None or data.strip().startswith(b"{")


@given(
    hook=st.sampled_from(WEBHOOKS),
    path=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4),
    value=JSON_VALUES,
    as_content=st.booleans(),
)
def test_w10_captured_body_with_one_field_replaced_raises_only_event_parse_error(
    hook: CapturedWebhook, path: list[str], value: Any, as_content: bool
) -> None:
    """Start from a real delivery and swap one nested field for any JSON value."""
    body = json.loads(hook.raw_body)
    node = body
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            break
        node = child
    node[path[-1]] = json.dumps(value) if as_content else value
    event = _outcome(json.dumps(body).encode())
    assert event is None or event.actor.id == body["actor"]["id"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"Create","actor":{"type":"Person","id":"users\\/a","name":"A\\udc00"},'
        b'"object":{"type":"Note","id":"1","name":"message",'
        b'"content":"{\\"message\\":\\"hi\\",\\"parameters\\":[]}"},"target":{"id":"abcd"}}',
        b'{"type":"Create","actor":{"type":"Person","id":"users\\/a","name":"A"},'
        b'"object":{"type":"Note","id":"1","name":"message",'
        b'"content":"{\\"message\\":\\"half \\\\ud83d emoji\\",\\"parameters\\":[]}"},'
        b'"target":{"id":"abcd"}}',
    ],
    ids=["lone-low-surrogate-in-name", "lone-high-surrogate-in-content"],
)
def test_w10_lone_surrogate_escapes_are_refused(body: bytes) -> None:
    with pytest.raises(EventParseError, match="lone surrogate"):
        parse_event(body)
