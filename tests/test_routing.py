"""routing.classify: one table of events and what they are (pure, no I/O)."""

from __future__ import annotations

import json

import pytest

from bot.config import AccessSettings, ChatSettings, ConfirmSettings, Role
from bot.routing import (
    PendingRef,
    Route,
    RouteKind,
    RoutingPolicy,
    classify,
    names_bot,
    reaction_answer,
)
from bot.talk.events import Actor, Event, Message, ReplyRef, Room, bot_actor_id, parse_event
from tests.talk.fixtures import CAPTURE_URL, load_webhook

POLICY = RoutingPolicy(
    access=AccessSettings(admins=("root",), admin_room="adminroom"),
    chat=ChatSettings(bot_name="talkbot"),
    confirm=ConfirmSettings(),
    bot_actor_id="bots/bot-ours",
)
GROUP = Room(token="group1", name="Project")
DM = Room(token="dm1", name='["alice","bob"]')
ADMIN = Room(token="adminroom", name="Admins")


def msg(
    text: str,
    *,
    sender: str = "users/alice",
    room: Room = GROUP,
    participant_type: int | None = 3,
    reply_actor: Actor | None = None,
    message_id: str = "10",
) -> Event:
    reply = ReplyRef(id="5", actor=reply_actor, text="earlier") if reply_actor else None
    return Event(
        type="Create",
        actor=Actor(id=sender, name="Alice", participant_type=participant_type),
        room=room,
        message=Message(id=message_id, text=text, raw_text=text, in_reply_to=reply),
    )


def route(
    event: Event,
    role: Role = "user",
    *,
    respond: str = "mention",
    room_mode: str | None = None,
    pending: tuple[PendingRef, ...] = (),
) -> Route:
    chat = ChatSettings(bot_name="talkbot", respond_in_groups=respond)
    policy = RoutingPolicy(POLICY.access, chat, POLICY.confirm, POLICY.bot_actor_id)
    return classify(event, role=role, policy=policy, room_mode=room_mode, pending=pending)


ALICE_PENDING = (PendingRef(code="K7QX", requester="users/alice"),)
TWO_PENDING = (*ALICE_PENDING, PendingRef(code="M3PA", requester="users/alice"))


@pytest.mark.parametrize(
    ("event", "role", "kwargs", "expected"),
    [
        # one-to-one rooms are two people talking: the same rule as every room (#12)
        (msg("lunch?", room=DM), "user", {}, RouteKind.IGNORE),
        (msg("lunch?", room=DM), "guest", {}, RouteKind.IGNORE),
        (msg("talkbot, hi", room=DM), "user", {}, RouteKind.CHAT),
        (msg("talkbot, hi", room=DM), "none", {}, RouteKind.IGNORE),
        (msg("lunch?", room=DM), "user", {"room_mode": "all"}, RouteKind.CHAT),
        (msg("lunch?"), "user", {"respond": "all"}, RouteKind.CHAT),
        (
            msg("lunch?", room=DM),
            "user",
            {"respond": "all", "room_mode": "mention"},
            RouteKind.IGNORE,
        ),
        # group rooms, mention mode
        (msg("lunch?"), "user", {}, RouteKind.IGNORE),
        (msg("talkbot, lunch?"), "user", {}, RouteKind.CHAT),
        (msg("hey @TalkBot"), "user", {}, RouteKind.CHAT),
        (msg("talkbots are cool"), "user", {}, RouteKind.IGNORE),
        (msg("mytalkbot"), "user", {}, RouteKind.IGNORE),
        (msg("lunch?"), "user", {"room_mode": "all"}, RouteKind.CHAT),
        (msg("talkbot hi"), "user", {"room_mode": "mention"}, RouteKind.CHAT),
        # replies to a bot message
        (
            msg("and?", reply_actor=Actor(id="bots/bot-ours", name="x (Bot)")),
            "user",
            {},
            RouteKind.CHAT,
        ),
        (
            msg("and?", reply_actor=Actor(id="bots/bot-x", name="talkbot (Bot)")),
            "user",
            {},
            RouteKind.CHAT,
        ),
        (
            msg("and?", reply_actor=Actor(id="bots/bot-x", name="Other (Bot)")),
            "user",
            {},
            RouteKind.IGNORE,
        ),
        (
            msg("and?", reply_actor=Actor(id="users/bob", name="talkbot (Bot)")),
            "user",
            {},
            RouteKind.IGNORE,
        ),
        # commands
        (msg("!status", room=ADMIN, sender="users/root"), "admin", {}, RouteKind.ADMIN_COMMAND),
        (msg("!status", room=ADMIN), "user", {}, RouteKind.REFUSE_COMMAND),
        (msg("!status", sender="users/root"), "admin", {}, RouteKind.REFUSE_COMMAND),
        (msg("!help"), "user", {}, RouteKind.ROOM_COMMAND),
        (msg("!jobs"), "guest", {}, RouteKind.ROOM_COMMAND),
        (msg("!usage"), "guest", {}, RouteKind.ROOM_COMMAND),  # one's own, in any room
        (msg("!usage bob", room=ADMIN), "user", {}, RouteKind.ROOM_COMMAND),  # still one's own
        (msg("!usage bob", room=ADMIN, sender="users/root"), "admin", {}, RouteKind.ADMIN_COMMAND),
        (msg("!forget", participant_type=1), "user", {}, RouteKind.ROOM_COMMAND),
        (msg("!forget", participant_type=6), "user", {}, RouteKind.ROOM_COMMAND),
        (msg("!forget", participant_type=3), "user", {}, RouteKind.REFUSE_COMMAND),
        (msg("!forget", participant_type=3), "admin", {}, RouteKind.ROOM_COMMAND),
        (msg("!mode all", participant_type=2), "user", {}, RouteKind.ROOM_COMMAND),
        (msg("!help"), "none", {}, RouteKind.IGNORE),
        (msg("!!! wow"), "user", {}, RouteKind.IGNORE),
        # confirmation answers
        (msg("yes"), "user", {"pending": ALICE_PENDING}, RouteKind.CONFIRM),
        (msg("Yes!"), "user", {"pending": ALICE_PENDING}, RouteKind.CONFIRM),
        (msg("ok k7qx"), "user", {"pending": ALICE_PENDING}, RouteKind.CONFIRM),
        (msg("no"), "user", {"pending": ALICE_PENDING}, RouteKind.DENY),
        (msg("cancel"), "user", {"pending": ALICE_PENDING}, RouteKind.DENY),
        (
            msg("yes", sender="users/bob"),
            "user",
            {"pending": ALICE_PENDING},
            RouteKind.NOT_REQUESTER,
        ),
        (
            msg("yes", sender="users/root"),
            "admin",
            {"pending": ALICE_PENDING},
            RouteKind.NOT_REQUESTER,
        ),
        (msg("tell me more"), "user", {"pending": ALICE_PENDING}, RouteKind.CHAT),
        (msg("yes I confirm and also do X"), "user", {"pending": ALICE_PENDING}, RouteKind.CHAT),
        (
            msg("chit chat", sender="users/bob"),
            "user",
            {"pending": ALICE_PENDING},
            RouteKind.IGNORE,
        ),
        # other event types
        (
            Event(type="Join", actor=Actor(id="bots/bot-ours"), room=GROUP),
            "none",
            {},
            RouteKind.MEMBERSHIP,
        ),
        (
            Event(type="Leave", actor=Actor(id="bots/bot-ours"), room=GROUP),
            "none",
            {},
            RouteKind.MEMBERSHIP,
        ),
        (
            Event(type="Like", actor=Actor(id="users/alice"), room=GROUP, reaction="👍"),
            "user",
            {},
            RouteKind.IGNORE,
        ),
        (
            Event(type="Like", actor=Actor(id="users/alice"), room=GROUP, reaction="👍"),
            "user",
            {"pending": ALICE_PENDING},
            RouteKind.REACTION,
        ),
        (
            Event(
                type="Activity",
                actor=Actor(id="users/alice"),
                room=GROUP,
                message=Message(id="3", text="Alice started a call", name="call_started"),
            ),
            "user",
            {},
            RouteKind.IGNORE,
        ),
        (
            Event(type="Poke", actor=Actor(id="users/alice"), room=GROUP),
            "user",
            {},
            RouteKind.IGNORE,
        ),
    ],
)
def test_classify_table(
    event: Event, role: Role, kwargs: dict[str, object], expected: RouteKind
) -> None:
    assert route(event, role, **kwargs).kind is expected


def test_admin_command_carries_name_and_args() -> None:
    result = route(msg("!role bob admin", room=ADMIN, sender="users/root"), "admin")
    assert (result.command, result.args) == ("role", "bob admin")


def test_a11_renamed_room_called_admin_is_not_the_admin_room() -> None:
    renamed = Room(token="elsewhere", name="adminroom")
    assert route(msg("!status", room=renamed, sender="users/root"), "admin").kind is (
        RouteKind.REFUSE_COMMAND
    )


def test_a11_non_admin_in_the_admin_room_is_refused() -> None:
    result = route(msg("!role bob admin", room=ADMIN, sender="users/bob"), "user")
    assert result.kind is RouteKind.REFUSE_COMMAND
    assert result.reason == "not an admin"


def test_yes_with_code_chooses_among_several() -> None:
    result = route(msg("yes M3PA"), "user", pending=TWO_PENDING)
    assert (result.kind, result.code) == (RouteKind.CONFIRM, "M3PA")


def test_yes_with_an_unknown_code_is_not_an_answer() -> None:
    assert route(msg("yes ZZZZ"), "user", pending=TWO_PENDING).kind is RouteKind.CHAT


def test_requesters_other_message_cancels_and_is_a_turn() -> None:
    result = route(msg("actually, never mind"), "user", pending=ALICE_PENDING)
    assert result.kind is RouteKind.CHAT
    assert result.cancels_pending


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("talkbot", True),
        ("@talkbot", True),
        ("TALKBOT!", True),
        ("ask talkbot.", True),
        ("talkbot2", False),
        ("a_talkbot", False),
        ("email@talkbot", False),
        ("talk bot", False),
    ],
)
def test_names_bot_as_a_word(text: str, named: bool) -> None:
    assert names_bot(text, "talkbot") is named


def test_reaction_answers() -> None:
    assert reaction_answer("👍") is RouteKind.CONFIRM
    assert reaction_answer("👍🏽") is RouteKind.CONFIRM
    assert reaction_answer("👎") is RouteKind.DENY
    assert reaction_answer("👀") is None
    assert reaction_answer(None) is None


# -- reactions (#13.7, I08) -------------------------------------------------------------

# The captured deliveries are by CaptureBot; its real message 23 (reacted to in 049)
# stands for a prompt the bot posted for alice, and bob's message 4 (010) for a copy
# of a prompt of bob's, written by bob himself.
CAPTURE_POLICY = RoutingPolicy(
    POLICY.access, POLICY.chat, POLICY.confirm, bot_actor_id(CAPTURE_URL)
)
ALICE_23 = {"type": "Person", "id": "users/alice", "name": "Alice", "talkParticipantType": "3"}
BOB_23 = {"type": "Person", "id": "users/bob", "name": "Bob", "talkParticipantType": "2"}
CAPTURE_BOT_23 = {"type": "Person", "id": bot_actor_id(CAPTURE_URL), "name": "CaptureBot (Bot)"}


def captured(seq: int, *, emoji: str | None = None, actor: dict[str, str] | None = None) -> Event:
    """A real Like/Undo; ``actor`` makes it the Talk 23 shape (the reacting attendee)."""
    body = json.loads(load_webhook(seq).raw_body)
    if emoji is not None:
        body["content"] = emoji
    if actor is not None:
        body["actor"] = actor
    return parse_event(json.dumps(body).encode())


def reacted_text(seq: int) -> str:
    message = captured(seq).message
    assert message is not None
    return message.text


def prompts_waiting() -> tuple[PendingRef, ...]:
    return (
        PendingRef(code="K7QX", requester="users/alice", prompt=reacted_text(49)),
        PendingRef(code="M3PA", requester="users/bob", prompt=reacted_text(10)),
    )


@pytest.mark.parametrize(
    ("seq", "emoji", "actor", "code"),
    [
        # Talk <= 22: the actor is the reacted message's author, never who reacted.
        pytest.param(10, None, None, None, id="talk21-alices-thumbs-on-bobs-copy-names-bob"),
        pytest.param(10, "👎", None, None, id="talk21-thumbs-down-on-the-copy-cancels-nothing"),
        pytest.param(23, None, None, None, id="talk21-bots-own-thumbs-on-the-copy-names-bob"),
        pytest.param(49, "👍", None, None, id="talk21-thumbs-on-the-bots-prompt-reactor-unknown"),
        pytest.param(49, None, None, None, id="talk21-rocket-is-no-answer"),
        pytest.param(11, None, None, None, id="talk21-heart-is-no-answer"),
        pytest.param(26, None, None, None, id="talk21-bots-own-party-popper"),
        pytest.param(13, None, None, None, id="undo-answers-nothing"),
        pytest.param(13, None, ALICE_23, None, id="talk23-undo-answers-nothing"),
        # Talk 23: the actor is who reacted, with talkParticipantType.
        pytest.param(49, "👍", ALICE_23, "K7QX", id="talk23-thumbs-on-the-prompt"),
        pytest.param(49, "👎🏽", ALICE_23, "K7QX", id="talk23-thumbs-down-on-the-prompt"),
        pytest.param(49, "❤️", ALICE_23, None, id="talk23-heart-is-no-answer"),
        pytest.param(49, "👍", CAPTURE_BOT_23, None, id="talk23-the-bots-own-thumbs"),
        pytest.param(11, "👍", ALICE_23, None, id="talk23-thumbs-on-a-message-that-is-no-prompt"),
        # Someone else's 👍 on the prompt names the prompt; the requester check refuses it
        # when it is decided, as for a yes-word (A05).
        pytest.param(49, "👍", BOB_23, "K7QX", id="talk23-someone-else-on-the-prompt"),
        # Talk 23 does not say who wrote the reacted message and the bot API returns no
        # message id: the exact recorded prompt text is what shows it is the prompt, so only
        # the requester's own 👍 on an exact copy could count (the I08 residual).
        pytest.param(10, "👍", BOB_23, "M3PA", id="talk23-requesters-own-thumbs-on-a-copy"),
    ],
)
def test_i08_a_reaction_answers_only_the_bots_prompt_on_talk_23(
    seq: int, emoji: str | None, actor: dict[str, str] | None, code: str | None
) -> None:
    """#13.7, I08: a 👍/👎 names a waiting prompt only when Talk names who reacted (Talk 23)
    and the reacted message is exactly that prompt; anything else says why it is ignored."""
    event = captured(seq, emoji=emoji, actor=actor)
    result = classify(event, role="user", policy=CAPTURE_POLICY, pending=prompts_waiting())
    assert result.kind is RouteKind.REACTION
    assert result.code == code
    assert bool(result.reason) is (code is None)


def test_i08_a_prompt_not_yet_recorded_matches_no_reaction() -> None:
    """#13.7, I08: an action whose prompt text is not stored yet is answered by no reaction."""
    pending = (PendingRef(code="K7QX", requester="users/alice"),)
    event = captured(49, emoji="👍", actor=ALICE_23)
    result = classify(event, role="user", policy=CAPTURE_POLICY, pending=pending)
    assert (result.kind, result.code) == (RouteKind.REACTION, None)
    assert result.reason
