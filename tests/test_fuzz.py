"""Properties over arbitrary input: signed garbage never breaks the daemon (W10), routing
never grants more than the role allows (A05, A11). The signature bit-flip property lives in
tests/talk/test_signature.py; the atheris harness for the parser in tests/fuzz/."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.config import AccessSettings, ChatSettings, ConfirmSettings, Role
from bot.routing import PendingRef, RouteKind, RoutingPolicy, classify, names_bot
from bot.talk.events import Actor, Event, Message, ReplyRef, Room
from tests.harness import ADMIN_ROOM, Daemon, create_event, dm_event, join_event, php_json

# -- strategies: JSON, and webhook bodies built from it --------------------------------

# Lone surrogates (valid JSON escapes, never sent by Talk) have their own test below.
TRICKY_TEXT = st.sampled_from(["", " ", "\u0000", "\u202e", "{mention-user1}", "{x}", "!"])
TEXT = st.text(max_size=24) | TRICKY_TEXT
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
BASES = (
    create_event("talkbot, what time is it?"),
    dm_event("hello"),
    join_event(),
    {
        "type": "Like",
        "actor": {"type": "Person", "id": "users/alice", "name": "Alice"},
        "object": create_event("x")["object"],
        "target": {"type": "Collection", "id": "grouproom1", "name": "Project room"},
        "content": "👍",
    },
)
PATHS = (
    ("type",),
    ("actor",),
    ("actor", "id"),
    ("actor", "type"),
    ("actor", "talkParticipantType"),
    ("object",),
    ("object", "id"),
    ("object", "name"),
    ("object", "content"),
    ("object", "inReplyTo"),
    ("target",),
    ("target", "id"),
    ("target", "name"),
    ("content",),
)
DELETE = object()
# Valid-looking "content" strings whose inside is arbitrary: the second JSON layer.
CONTENTS = JSON.map(json.dumps) | st.builds(
    lambda message, parameters: json.dumps({"message": message, "parameters": parameters}),
    JSON,
    JSON,
)


def _set(event: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    node: Any = event
    for key in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return
        node = node[key]
    if not isinstance(node, dict):
        return
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A real event shape with a fresh message id and up to two fields changed."""
    event = copy.deepcopy(draw(st.sampled_from(BASES)))
    _set(event, ("object", "id"), str(draw(st.integers(1, 10**9))))
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(PATHS))
        values: st.SearchStrategy[object]
        if path[-1] == "content":
            values = CONTENTS
        elif len(path) > 1:
            values = TEXT | st.just(DELETE) | JSON  # mostly plausible: reaches the handlers
        else:
            values = st.just(DELETE) | JSON
        _set(event, path, draw(values))
    if draw(st.booleans()):
        return php_json(event)
    return json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")


BODIES = st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda v: json.dumps(v).encode()),
    mutated_events(),
    mutated_events(),  # twice: most examples should get past the parser
)


async def _inbox_statuses(daemon: Daemon) -> list[str]:
    """The status of every inbox row so far (row ids are consecutive from 1)."""
    store = daemon.runtime.running.store
    statuses: list[str] = []
    while (status := await store.event_status(len(statuses) + 1)) is not None:
        statuses.append(status)
    return statuses


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES)
async def test_w10_any_signed_body_is_200_or_400_and_never_breaks_a_turn(
    daemon: Daemon, body: bytes
) -> None:
    asked = len(daemon.llm.requests)
    status = await daemon.post(body)
    assert status in (200, 400), body
    await daemon.idle()
    event(f"status {status}, model asked: {len(daemon.llm.requests) > asked}")
    assert await daemon.runtime.running.store.inbox_backlog() == 0
    statuses = await _inbox_statuses(daemon)
    assert set(statuses) <= {"done"}, (statuses, body)
    async with daemon.session.get(f"{daemon.url}/healthz") as resp:
        assert resp.status == 200


def _with_lone_surrogate(where: str) -> dict[str, Any]:
    event = dm_event("hi \ud83d there" if where == "message" else "hi")
    if where == "actor_name":
        event["actor"]["name"] = "Al\udc00ice"
    if where == "room_name":
        event["target"]["name"] = "Room \ud83d"
    return event


@pytest.mark.parametrize("where", ["message", "actor_name", "room_name"])
async def test_w10_lone_surrogate_escape_is_refused_or_handled(daemon: Daemon, where: str) -> None:
    """JSON may escape a lone surrogate; Talk (PHP) never sends one, so 400 is right too."""
    status = await daemon.post(_with_lone_surrogate(where))
    await daemon.idle()
    assert status == 400 or set(await _inbox_statuses(daemon)) == {"done"}


# -- routing ---------------------------------------------------------------------------

PREFIXES = st.sampled_from(["!", "/", "@@"])
USERS = ("users/alice", "users/root", "users/bob")
ACTOR_IDS = (
    st.sampled_from(
        [
            *USERS,
            "users/Root",
            "users/root ",
            "guests/abc",
            "emails/x@y.z",
            "federated_users/root@evil.example",
            "bots/bot-1",
        ]
    )
    | TEXT
)
ROOMS = st.builds(
    Room,
    token=st.sampled_from([ADMIN_ROOM, "grouproom1", "dmroom01"]) | TEXT,
    name=st.sampled_from(["Admins", "admin", '["alice","bob"]', "Project"]) | TEXT,
)
MESSAGE_TEXTS = (
    st.sampled_from(
        [
            "!help",
            "!status",
            "!role bob admin",
            "!restart",
            "/mode all",
            "!forget",
            "@@jobs",
            "yes",
            "y K7QX",
            "no",
            "ok m3pa",
            "talkbot hi",
            "@talkbot",
            "hello",
        ]
    )
    | st.builds(lambda p, t: p + t, PREFIXES, TEXT)
    | TEXT
)
ACTORS = st.builds(
    Actor,
    id=ACTOR_IDS,
    type=st.sampled_from(["Person", "Application"]) | TEXT,
    name=TEXT,
    participant_type=st.none() | st.integers(-1, 10),
)
REPLIES = st.none() | st.builds(ReplyRef, id=st.just("5"), actor=ACTORS, text=TEXT)
MESSAGES = st.builds(
    Message,
    id=st.sampled_from(["1", "42"]) | TEXT,
    text=MESSAGE_TEXTS,
    name=st.sampled_from(["message", "", "call_started"]),
    in_reply_to=REPLIES,
)
EVENTS = st.builds(
    Event,
    type=st.sampled_from(["Create", "Activity", "Like", "Undo", "Join", "Leave"]) | TEXT,
    actor=ACTORS,
    room=ROOMS,
    message=st.none() | MESSAGES,
    reaction=st.none() | st.sampled_from(["👍", "👎", "❤️"]),
)
PENDING = st.lists(
    st.builds(PendingRef, code=st.sampled_from(["K7QX", "M3PA"]), requester=ACTOR_IDS),
    max_size=2,
).map(tuple)
POLICIES = st.builds(
    lambda prefix, mode: RoutingPolicy(
        access=AccessSettings(admins=("root",), admin_room=ADMIN_ROOM, command_prefix=prefix),
        chat=ChatSettings(bot_name="talkbot", respond_in_groups=mode),
        confirm=ConfirmSettings(),
        bot_actor_id="bots/bot-ours",
    ),
    PREFIXES,
    st.sampled_from(["mention", "all"]),
)
COMMANDS = frozenset({RouteKind.ADMIN_COMMAND, RouteKind.ROOM_COMMAND, RouteKind.REFUSE_COMMAND})
ANSWERS = frozenset({RouteKind.CONFIRM, RouteKind.DENY, RouteKind.NOT_REQUESTER})


@settings(max_examples=200, deadline=None)
@given(
    event=EVENTS,
    role=st.sampled_from(["none", "guest", "user", "admin"]),
    policy=POLICIES,
    room_mode=st.none() | st.sampled_from(["all", "mention"]) | TEXT,
    pending=PENDING,
)
def test_a11_a05_classify_never_raises_and_never_grants_more_than_the_role(
    event: Event,
    role: Role,
    policy: RoutingPolicy,
    room_mode: str | None,
    pending: tuple[PendingRef, ...],
) -> None:
    route = classify(event, role=role, policy=policy, room_mode=room_mode, pending=pending)
    requesters = {p.requester for p in pending}
    if role == "none":
        assert route.kind in {RouteKind.IGNORE, RouteKind.MEMBERSHIP, RouteKind.REACTION}
    if event.type != "Create":
        assert route.kind not in {RouteKind.CHAT, *COMMANDS, *ANSWERS}
    if route.kind is RouteKind.ADMIN_COMMAND:  # A11: only an admin, only in the admin room
        assert role == "admin"
        assert event.room.token == ADMIN_ROOM
    if route.kind in {RouteKind.CONFIRM, RouteKind.DENY} or route.cancels_pending:
        assert event.actor.id in requesters  # A05: only the requester answers
    if route.kind is RouteKind.CHAT:
        _assert_addressed(event, policy, room_mode, cancels=route.cancels_pending)


def _assert_addressed(
    event: Event, policy: RoutingPolicy, room_mode: str | None, *, cancels: bool
) -> None:
    """In a group room in mention mode, a turn needs the bot's name or a reply to it."""
    assert event.message is not None
    mode = room_mode or policy.chat.respond_in_groups
    if event.room.is_one_to_one or mode == "all" or cancels:
        return
    reply = event.message.in_reply_to
    replied_to_bot = reply is not None and reply.actor.is_bot
    assert names_bot(event.message.text, "talkbot") or replied_to_bot
