"""TalkClient against the loopback fake Talk: signing, splitting, retries, typed errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from structlog.testing import capture_logs

from bot.errors import (
    TalkAuthError,
    TalkError,
    TalkRateLimitedError,
    TalkRejectedError,
    TalkUnavailableError,
)
from bot.talk.client import RetryPolicy, TalkClient, split_message
from bot.talk.signature import BOT_RANDOM_HEADER, BOT_SIGNATURE_HEADER, new_random, sign
from tests.fakes.talk_server import FakeTalk

SECRET = "fake-bot-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
ROOM = "room1234"
MESSAGE_PATH = "/ocs/v2.php/apps/spreed/api/v1/bot/{token}/message"

MakeClient = Callable[..., TalkClient]


@pytest.fixture
async def talk() -> AsyncIterator[FakeTalk]:
    async with FakeTalk(SECRET, rooms={ROOM}) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(talk: FakeTalk, session: aiohttp.ClientSession, sleeps: list[float]) -> MakeClient:
    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def build(**kwargs: object) -> TalkClient:
        options: dict[str, object] = {"sleep": record_sleep, "secret": SECRET}
        options |= kwargs
        return TalkClient(session, talk.url, **options)  # type: ignore[arg-type]  # test factory

    return build


def expected_signature(random: str, value: str) -> str:
    """Written out here so a bug in bot.talk.signature cannot hide itself."""
    return hmac.new(SECRET.encode(), (random + value).encode(), hashlib.sha256).hexdigest()


async def post_raw(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> int:
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return response.status


# --- signing (R04) -------------------------------------------------------------------


async def test_r04_signature_is_over_random_plus_message_only(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    await make_client().send_message(ROOM, 'Grüße 🤖 / "quotes"', reply_to=7)

    assert talk.texts(ROOM) == ['Grüße 🤖 / "quotes"']
    (request,) = talk.requests
    random = request.headers[BOT_RANDOM_HEADER]
    assert len(random) >= 32
    assert request.headers[BOT_SIGNATURE_HEADER] == expected_signature(
        random, 'Grüße 🤖 / "quotes"'
    )
    assert request.headers["OCS-APIRequest"] == "true"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert "X-Nextcloud-Talk-Backend" not in request.headers


async def test_r04_fake_rejects_a_signature_over_the_json_body(
    talk: FakeTalk, session: aiohttp.ClientSession
) -> None:
    body = json.dumps({"message": "signed body"}).encode()
    random = new_random()
    headers = {
        "OCS-APIRequest": "true",
        "Content-Type": "application/json",
        BOT_RANDOM_HEADER: random,
        BOT_SIGNATURE_HEADER: sign(SECRET, random, body),
    }

    status = await post_raw(session, talk.url + MESSAGE_PATH.format(token=ROOM), body, headers)

    assert status == 401
    assert talk.messages == []


async def test_send_records_reply_reference_and_silent(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    refs = await make_client().send_message(
        ROOM, "deploy done", reply_to="42", reference_id="turn-1", silent=True
    )

    (sent,) = talk.messages
    assert (sent.token, sent.message, sent.reply_to, sent.silent) == (
        ROOM,
        "deploy done",
        42,
        True,
    )
    assert refs == [sent.reference_id]
    assert sent.reference_id is not None
    assert sent.reference_id.startswith("turn-1")


async def test_every_message_gets_a_reference_id_when_none_is_given(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    client = make_client()
    first = await client.send_message(ROOM, "one")
    second = await client.send_message(ROOM, "two")

    assert [m.reference_id for m in talk.messages] == first + second
    assert first != second
    assert all(len(ref) <= 64 for ref in first + second)


async def test_empty_message_is_rejected_without_a_request(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    with pytest.raises(TalkRejectedError):
        await make_client().send_message(ROOM, " \n\t ")

    assert talk.requests == []


@pytest.mark.parametrize("token", ["../../x", "ROOM1234", "ab", "room1234/message?x=1"])
async def test_malformed_room_token_never_leaves_the_process(
    talk: FakeTalk, make_client: MakeClient, token: str
) -> None:
    with pytest.raises(TalkRejectedError):
        await make_client().send_message(token, "hello")

    assert talk.requests == []


# --- splitting (A12) -----------------------------------------------------------------


async def test_a12_long_message_is_sent_as_three_parts_in_order(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    paragraph = "word " * 199 + "end.\n\n"  # 1001 characters
    text = (paragraph * 70)[:70_000]

    refs = await make_client().send_message(ROOM, text, reply_to=5, reference_id="long")

    sent = talk.messages
    assert len(sent) == 3
    assert all(len(m.message) <= 32000 for m in sent)
    assert [m.reply_to for m in sent] == [5, None, None]
    assert [m.reference_id for m in sent] == refs
    assert len(set(refs)) == 3
    assert " ".join(m.message for m in sent).split() == text.split()
    assert all(m.message.endswith("end.") for m in sent[:2])  # cut at paragraph breaks


async def test_message_of_exactly_max_length_is_one_part(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    text = "x" * 32000

    refs = await make_client().send_message(ROOM, "\n" + text + "  ")

    assert len(refs) == 1
    assert talk.texts() == [text]


@pytest.mark.parametrize(
    "symbol",
    [
        "😀",
        "👨‍👩‍👧",  # family: zero-width joiners
        "👍🏽",  # skin tone modifier
        "🇩🇪",  # flag: two regional indicators
        "1️⃣",  # keycap: variation selector + combining mark
        "e\u0301",  # e + combining acute
    ],
)
async def test_split_never_breaks_a_symbol_at_the_boundary(
    talk: FakeTalk, make_client: MakeClient, symbol: str
) -> None:
    texts = ["a" * (32000 - offset) + symbol + "b" * 50 for offset in range(len(symbol) + 1)]
    for text in texts:
        await make_client().send_message(ROOM, text)

    sent = talk.texts()
    pairs = list(zip(sent[::2], sent[1::2], strict=True))
    assert len(pairs) == len(texts)
    for (first, second), text in zip(pairs, texts, strict=True):
        assert len(first) <= 32000
        assert first + second == text
        assert symbol in first or symbol in second


def test_split_prefers_line_breaks_and_respects_the_limit() -> None:
    text = "alpha beta\ngamma delta epsilon\n\nzeta eta theta iota"

    parts = split_message(text, 20)

    assert parts == ["alpha beta", "gamma delta epsilon", "zeta eta theta iota"]


# --- errors and retries (R03) --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, TalkRejectedError),
        (404, TalkRejectedError),
        (412, TalkRejectedError),
        (413, TalkRejectedError),
        (401, TalkAuthError),
    ],
)
async def test_r03_client_errors_are_not_retried(
    talk: FakeTalk,
    make_client: MakeClient,
    sleeps: list[float],
    status: int,
    error: type[TalkError],
) -> None:
    talk.fail_next(status, count=5)
    client = make_client()

    with pytest.raises(error) as raised:
        await client.send_message(ROOM, "hello")

    assert raised.value.status == status
    assert len(talk.requests) == 1
    assert sleeps == []
    assert client.failures == 1
    assert client.last_error is not None
    assert client.last_error_at is not None


async def test_r03_401_from_the_real_check_is_not_retried(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    with pytest.raises(TalkAuthError):
        await make_client(secret="another-secret-of-the-right-length-0123456789").send_message(
            ROOM, "hello"
        )

    assert [r.status for r in talk.requests] == [401]


async def test_r03_too_long_for_the_server_is_rejected_not_retried(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    with pytest.raises(TalkRejectedError):
        await make_client(max_length=40000).send_message(ROOM, "y" * 33000)

    assert [r.status for r in talk.requests] == [413]


async def test_r03_429_waits_for_retry_after_then_succeeds(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.fail_next(429, retry_after=7)

    await make_client().send_message(ROOM, "hello")

    assert sleeps == [7.0]
    assert [r.status for r in talk.requests] == [429, 201]
    assert talk.texts() == ["hello"]


async def test_r03_persistent_429_is_rate_limited(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.fail_next(429, count=10)

    with pytest.raises(TalkRateLimitedError):
        await make_client().send_message(ROOM, "hello")

    assert len(talk.requests) == 4
    assert len(sleeps) == 3


async def test_r03_retry_after_beyond_the_cap_gives_up_at_once(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.fail_next(429, retry_after=600)

    with pytest.raises(TalkRateLimitedError):
        await make_client().send_message(ROOM, "hello")

    assert len(talk.requests) == 1
    assert sleeps == []


async def test_r03_503_twice_then_success_reuses_the_reference_id(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.fail_next(503, count=2)

    refs = await make_client().send_message(ROOM, "hello", reference_id="abc")

    assert [r.status for r in talk.requests] == [503, 503, 201]
    assert {r.param("referenceId") for r in talk.requests} == set(refs)
    assert len({r.headers[BOT_RANDOM_HEADER] for r in talk.requests}) == 3  # fresh each time
    assert len(sleeps) == 2
    assert talk.texts() == ["hello"]


async def test_r03_persistent_500_is_unavailable_after_the_policy_attempts(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.fail_next(500, count=10)
    policy = RetryPolicy(attempts=3, base_delay=1.0, max_delay=1.5)
    client = make_client(retry=policy)

    with pytest.raises(TalkUnavailableError):
        await client.send_message(ROOM, "hello")

    assert len(talk.requests) == 3
    assert len(sleeps) == 2
    assert sleeps[0] <= 1.0
    assert sleeps[1] <= 1.5
    assert client.failures == 1


async def test_r03_timeout_is_retried(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.delay_next(30)

    await make_client(retry=RetryPolicy(timeout=0.2)).send_message(ROOM, "hello")

    assert talk.texts() == ["hello"]
    assert len(sleeps) == 1


async def test_r03_talk_down_is_unavailable(
    session: aiohttp.ClientSession, sleeps: list[float]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = TalkClient(session, f"http://127.0.0.1:{port}", SECRET, sleep=record_sleep)

    with pytest.raises(TalkUnavailableError):
        await client.send_message(ROOM, "hello")

    assert len(sleeps) == 3


async def test_r05_commit_then_dropped_connection_resends_once_with_same_reference(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    talk.drop_after_commit_next()

    refs = await make_client().send_message(ROOM, "hello", reference_id="turn-9")

    # At-least-once: the committed copy plus exactly one resend, both under one referenceId.
    assert [(r.status, r.dropped) for r in talk.requests] == [(201, True), (201, False)]
    assert len(talk.messages) == 2
    assert [m.reference_id for m in talk.messages] == refs * 2


async def test_logs_name_the_room_but_never_the_text_or_secret(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    talk.fail_next(503)

    with capture_logs() as logs:
        await make_client().send_message(ROOM, "top secret plan")

    retry = next(entry for entry in logs if entry["event"] == "talk.retry")
    assert (retry["room"], retry["status"], retry["attempt"]) == (ROOM, 503, 1)
    assert "top secret plan" not in repr(logs)
    assert SECRET not in repr(logs)


# --- reactions -----------------------------------------------------------------------


async def test_react_and_unreact(talk: FakeTalk, make_client: MakeClient) -> None:
    client = make_client()

    await client.react(ROOM, 17, "👍")
    await client.react(ROOM, "17", "👍")
    assert talk.reactions[(ROOM, 17)] == {"👍"}

    await client.unreact(ROOM, 17, "👍")
    await client.unreact(ROOM, 17, "👍")  # already gone: not an error

    assert talk.reactions[(ROOM, 17)] == set()
    assert [(c.action, c.status) for c in talk.reaction_log] == [
        ("add", 201),
        ("add", 200),
        ("remove", 200),
        ("remove", 404),
    ]


async def test_react_in_a_room_without_the_bot_is_an_auth_error(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    with pytest.raises(TalkAuthError):
        await make_client().react("otherroom", 3, "🎉")

    assert talk.reaction_log == []


# --- the fake itself -----------------------------------------------------------------


def signed_headers(value: str, **extra: str) -> dict[str, str]:
    random = new_random()
    headers = {
        "OCS-APIRequest": "true",
        BOT_RANDOM_HEADER: random,
        BOT_SIGNATURE_HEADER: expected_signature(random, value),
    }
    return headers | extra


@pytest.mark.parametrize(
    ("headers", "message", "status"),
    [
        (signed_headers("hi", **{"OCS-APIRequest": ""}), "hi", 412),
        ({"OCS-APIRequest": "true"}, "hi", 400),
        (signed_headers("hi") | {BOT_RANDOM_HEADER: "short"}, "hi", 400),
        (signed_headers("   "), "   ", 400),
        (signed_headers("hi") | {BOT_SIGNATURE_HEADER: "0" * 64}, "hi", 401),
        (signed_headers("z" * 32001), "z" * 32001, 413),
        (signed_headers("fine"), "fine", 201),
    ],
    ids=["no-ocs-header", "no-signature", "short-random", "blank", "bad-signature", "413", "ok"],
)
async def test_fake_checks_like_botcontroller(
    talk: FakeTalk,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    message: str,
    status: int,
) -> None:
    body = json.dumps({"message": message}).encode()
    headers = headers | {"Content-Type": "application/json"}

    got = await post_raw(session, talk.url + MESSAGE_PATH.format(token=ROOM), body, headers)

    assert got == status
    assert len(talk.messages) == (1 if status == 201 else 0)


async def test_fake_accepts_form_bodies_and_uppercase_hex(
    talk: FakeTalk, session: aiohttp.ClientSession
) -> None:
    headers = signed_headers("form message")
    headers[BOT_SIGNATURE_HEADER] = headers[BOT_SIGNATURE_HEADER].upper()
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    body = b"message=form+message&replyTo=3&silent=1"

    got = await post_raw(session, talk.url + MESSAGE_PATH.format(token=ROOM), body, headers)

    assert got == 201
    (sent,) = talk.messages
    assert (sent.message, sent.reply_to, sent.silent) == ("form message", 3, True)


async def test_fake_unknown_room_is_401_and_set_rooms_enables_it(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    client = make_client()
    with pytest.raises(TalkAuthError):
        await client.send_message("newroom1", "hello")

    talk.set_rooms({ROOM, "newroom1"})
    await client.send_message("newroom1", "hello")

    assert talk.texts("newroom1") == ["hello"]


async def test_fake_wait_for_messages(talk: FakeTalk, make_client: MakeClient) -> None:
    await make_client().send_message(ROOM, "one")

    assert [m.message for m in await talk.wait_for_messages(1)] == ["one"]
    with pytest.raises(AssertionError, match="expected 2 messages"):
        await talk.wait_for_messages(2, timeout=0.05)
