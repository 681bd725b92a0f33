"""TalkClient against the loopback fake Talk: signing, splitting, retries, typed errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from structlog.testing import capture_logs

from bot.clock import ManualClock
from bot.errors import (
    TalkAuthError,
    TalkError,
    TalkOutcomeUnknownError,
    TalkRateLimitedError,
    TalkRejectedError,
    TalkUnavailableError,
)
from bot.talk.client import AUTH_REFUSAL_MEMORY_S, MESSAGE_TIMEOUT_S, RetryPolicy, TalkClient
from bot.talk.signature import BOT_RANDOM_HEADER, BOT_SIGNATURE_HEADER, new_random, sign
from bot.talk.splitting import split_message
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


async def test_t01_post_that_times_out_is_not_sent_again_and_stored_once(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.throttle_next(0.6)  # Nextcloud's throttle: held, then stored after the client left
    client = make_client(retry=RetryPolicy(message_timeout=0.2))

    with pytest.raises(TalkOutcomeUnknownError) as raised:
        await client.send_message(ROOM, "hello", reference_id="turn-3")
    await talk.wait_settled()

    assert isinstance(raised.value, TalkUnavailableError)  # callers catching that still work
    assert "not sent again" in str(raised.value)
    assert sleeps == []
    assert [(r.status, r.abandoned) for r in talk.requests] == [(201, True)]
    assert talk.texts() == ["hello"]
    assert client.failures == 1
    assert client.last_error == "TimeoutError: TalkOutcomeUnknownError"
    assert client.last_error_at is not None


async def test_t01_post_waits_out_a_throttle_shorter_than_its_timeout(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.throttle_next(0.3)

    await make_client(retry=RetryPolicy(message_timeout=1.0)).send_message(ROOM, "hello")

    assert [(r.status, r.abandoned) for r in talk.requests] == [(201, False)]
    assert talk.texts() == ["hello"]
    assert sleeps == []
    assert MESSAGE_TIMEOUT_S > 25  # Nextcloud's throttle holds a call for up to 25 s


async def test_r03_reaction_that_times_out_is_tried_again(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.delay_next(30)  # a reaction is idempotent: a second one is only a 200

    await make_client(retry=RetryPolicy(reaction_timeout=0.2)).react(ROOM, 17, "👀")

    assert talk.reactions[(ROOM, 17)] == {"👀"}
    assert len(sleeps) == 1


async def test_r03_refused_connection_is_retried_then_unavailable(
    session: aiohttp.ClientSession, sleeps: list[float]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = TalkClient(session, f"http://127.0.0.1:{port}", SECRET, sleep=record_sleep)

    with pytest.raises(TalkUnavailableError) as raised:
        await client.send_message(ROOM, "hello")

    assert not isinstance(raised.value, TalkOutcomeUnknownError)  # nothing was ever sent
    assert isinstance(raised.value.__cause__, aiohttp.ClientConnectorError)
    assert len(sleeps) == 3


UNREACHABLE = ConnectionKey("talk.invalid", 80, False, True, None, None, None)


def fail_first(error: Exception, *, after_sending: bool) -> aiohttp.ClientMiddlewareType:
    """The first request fails with ``error``: before it leaves, or once Talk has it."""
    pending = [error]

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if not pending:
            return await handler(request)
        if after_sending:
            response = await handler(request)
            response.release()
        raise pending.pop()

    return middleware


@pytest.mark.parametrize(
    ("error", "after_sending"),
    [
        (aiohttp.ClientConnectorError(UNREACHABLE, ConnectionRefusedError(111, "refused")), False),
        (aiohttp.ClientConnectorDNSError(UNREACHABLE, OSError(-2, "Name not known")), False),
        (aiohttp.ConnectionTimeoutError("connect or sock_connect timed out"), False),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientPayloadError("answer cut short"), True),
        (aiohttp.SocketTimeoutError("sock_read timed out"), True),
        (aiohttp.ClientOSError(104, "reset after sending"), True),
        (TimeoutError(), True),
    ],
    ids=[
        "refused",
        "dns",
        "connect-timeout",
        "disconnected",
        "payload",
        "read-timeout",
        "reset",
        "total-timeout",
    ],
)
async def test_r03_only_a_post_that_never_left_is_retried(
    talk: FakeTalk, sleeps: list[float], error: Exception, after_sending: bool
) -> None:
    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    middleware = fail_first(error, after_sending=after_sending)
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
        client = TalkClient(session, talk.url, SECRET, sleep=record_sleep)
        if after_sending:
            with pytest.raises(TalkOutcomeUnknownError):
                await client.send_message(ROOM, "hello")
        else:
            await client.send_message(ROOM, "hello")

    assert talk.texts() == ["hello"]  # exactly one copy either way
    assert len(talk.requests) == 1
    assert len(sleeps) == (0 if after_sending else 1)


async def test_r03_503_then_timeout_is_not_sent_a_third_time(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.fail_next(503)
    talk.throttle_next(0.6)
    client = make_client(retry=RetryPolicy(message_timeout=0.2))

    with pytest.raises(TalkOutcomeUnknownError):
        await client.send_message(ROOM, "hello")
    await talk.wait_settled()

    assert [r.status for r in talk.requests] == [503, 201]
    assert len(sleeps) == 1
    assert talk.texts() == ["hello"]


async def test_r05_commit_then_dropped_connection_is_not_sent_again(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    talk.drop_after_commit_next()

    with pytest.raises(TalkOutcomeUnknownError):
        await make_client().send_message(ROOM, "hello", reference_id="turn-9")

    # Talk does not deduplicate by referenceId: a resend would be a second copy.
    assert [(r.status, r.dropped) for r in talk.requests] == [(201, True)]
    assert talk.texts() == ["hello"]
    assert sleeps == []


# --- a room that answers 401 (T02) ---------------------------------------------------


async def test_t02_401_is_remembered_per_room_until_the_window_passes(
    talk: FakeTalk, make_client: MakeClient, sleeps: list[float]
) -> None:
    clock = ManualClock()
    client = make_client(clock=clock)
    with pytest.raises(TalkAuthError):
        await client.send_message("otherroom", "first")

    with pytest.raises(TalkAuthError, match="not enabled in that room") as raised:
        await client.send_message("otherroom", "second")
    await client.send_message(ROOM, "another room is still tried")
    clock.advance(AUTH_REFUSAL_MEMORY_S - 1)
    with pytest.raises(TalkAuthError):
        await client.react("otherroom", 5, "👍")

    assert raised.value.status == 401
    assert [(r.path.split("/")[-2], r.status) for r in talk.requests] == [
        ("otherroom", 401),
        (ROOM, 201),
    ]
    assert client.failures == 3
    assert client.last_error == "401: TalkAuthError (remembered)"
    assert sleeps == []

    clock.advance(1)
    talk.set_rooms({ROOM, "otherroom"})  # the bot was enabled there meanwhile
    await client.send_message("otherroom", "after the window")

    assert talk.texts("otherroom") == ["after the window"]
    assert [r.status for r in talk.requests if "/otherroom/" in r.path] == [401, 201]


async def test_t02_a_room_is_called_again_once_the_window_passed_and_remembered_again(
    talk: FakeTalk, make_client: MakeClient
) -> None:
    clock = ManualClock()
    client = make_client(clock=clock)
    for _ in range(3):
        with pytest.raises(TalkAuthError):
            await client.send_message("otherroom", "hello")
        with pytest.raises(TalkAuthError):
            await client.send_message("otherroom", "hello")
        clock.advance(AUTH_REFUSAL_MEMORY_S)

    assert [r.status for r in talk.requests] == [401, 401, 401]  # one per window, not six


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
    with pytest.raises(TalkAuthError):
        await make_client().send_message("newroom1", "hello")

    talk.set_rooms({ROOM, "newroom1"})
    await make_client().send_message("newroom1", "hello")  # a client that saw no 401

    assert talk.texts("newroom1") == ["hello"]


async def test_fake_wait_for_messages(talk: FakeTalk, make_client: MakeClient) -> None:
    await make_client().send_message(ROOM, "one")

    assert [m.message for m in await talk.wait_for_messages(1)] == ["one"]
    with pytest.raises(AssertionError, match="expected 2 messages"):
        await talk.wait_for_messages(2, timeout=0.05)
