"""routing.classify: one table of events and what they are (pure, no I/O)."""

from __future__ import annotations

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
from bot.talk.events import Actor, Event, Message, ReplyRef, Room

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
