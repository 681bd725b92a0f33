"""The webhook endpoint end to end: statuses, durability, dedupe (W01-W14)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot import __version__
from bot.talk.signature import RANDOM_HEADER, SIGNATURE_HEADER, sign
from tests.harness import SECRET, Daemon, create_event, dm_event, php_json, signed_headers
from tests.talk.fixtures import all_webhooks


async def test_dm_message_gets_exactly_one_signed_reply(daemon: Daemon) -> None:
    daemon.llm.reply("Hello Alice!")
    texts = await daemon.say(dm_event("hi there"))
    assert texts == ["Hello Alice!"]
    sent = daemon.talk.messages[0]
    assert sent.token == "dmroom01"
    assert sent.reply_to is not None
    # Named in Nextcloud's logs as talkbot, not as aiohttp.
    [post] = [r for r in daemon.talk.requests if r.method == "POST" and "/message" in r.path]
    assert post.headers["User-Agent"] == f"talkbot/{__version__}"


async def test_w04_same_webhook_twice_answers_once(daemon: Daemon) -> None:
    body = php_json(dm_event("only once please"))
    headers = signed_headers(body)
    assert await daemon.post(body, headers=headers) == 200
    assert await daemon.post(body, headers=headers) == 200
    await daemon.idle()
    assert len(daemon.llm.requests) == 1
    assert len(daemon.talk.messages) == 1


async def test_w05_replay_with_new_random_is_still_dropped(daemon: Daemon) -> None:
    event = dm_event("same message id")
    assert await daemon.post(event) == 200
    assert await daemon.post(event) == 200  # a fresh random each time: dedupe by message id
    await daemon.idle()
    assert len(daemon.llm.requests) == 1


async def test_w06_out_of_order_messages_are_both_answered(daemon: Daemon) -> None:
    await daemon.say(dm_event("eleven", message_id=11))
    await daemon.say(dm_event("ten", message_id=10))
    assert len(daemon.talk.messages) == 2


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        ("missing_signature", 401),
        ("missing_random", 401),
        ("short_random", 401),
        ("forged_signature", 401),
        ("non_hex_signature", 401),
        ("wrong_secret", 401),
    ],
)
async def test_w01_bad_signatures_are_401_and_store_nothing(
    daemon: Daemon, mutate: str, expected: int
) -> None:
    body = php_json(dm_event("forged"))
    headers = signed_headers(body)
    if mutate == "missing_signature":
        del headers[SIGNATURE_HEADER]
    elif mutate == "missing_random":
        del headers[RANDOM_HEADER]
    elif mutate == "short_random":
        headers[RANDOM_HEADER] = "abc"
        headers[SIGNATURE_HEADER] = sign(SECRET, "abc", body)
    elif mutate == "forged_signature":
        headers[SIGNATURE_HEADER] = "0" * 64
    elif mutate == "non_hex_signature":
        headers[SIGNATURE_HEADER] = "z" * 64
    else:
        headers = signed_headers(body, secret="another-secret-of-forty-characters-at-least")
    assert await daemon.post(body, headers=headers) == expected
    await daemon.idle()
    assert await daemon.runtime.running.store.inbox_backlog() == 0
    assert daemon.llm.requests == []


async def test_w08_two_mib_body_is_413(daemon: Daemon) -> None:
    body = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    assert await daemon.post(body, headers=signed_headers(body)) == 413


async def test_w08_chunked_body_without_length_is_cut_at_the_limit(daemon: Daemon) -> None:
    chunk = b" " * 65536

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(40):  # 2.5 MiB, no Content-Length
            yield chunk

    url = f"{daemon.url}{daemon.settings.server.webhook_path}"
    headers = signed_headers(b"")
    async with daemon.session.post(url, data=stream(), headers=headers) as resp:
        assert resp.status == 413


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        b'{"type": "Create"}',
        b'{"type":"Create","actor":{"type":"Person","id":"users\\/alice"},'
        b'"object":{"type":"Note","id":"1","content":"not json"},"target":{"id":"abcd"}}',
        b"[" * 10000 + b"]" * 10000,
    ],
    ids=["invalid-utf8", "json-array", "missing-actor", "content-not-json", "deep-nesting"],
)
async def test_w10_signed_garbage_is_400_never_500(daemon: Daemon, body: bytes) -> None:
    assert await daemon.post(body, headers=signed_headers(body)) == 400
    assert daemon.llm.requests == []


async def test_w10_parameters_object_where_list_expected_is_fine(daemon: Daemon) -> None:
    event = dm_event(
        "hi {mention-user1}",
        parameters={
            "mention-user1": {"type": "user", "id": "bob", "name": "Bob", "mention-id": "bob"}
        },
    )
    daemon.llm.reply("hey")
    assert await daemon.say(event) == ["hey"]
    assert "hi @bob" in daemon.llm.requests[0].messages[-1]["content"]


async def test_w11_unknown_event_type_is_acknowledged_and_ignored(daemon: Daemon) -> None:
    event = {
        "type": "Wave",
        "actor": {"type": "Person", "id": "users/alice", "name": "A"},
        "object": {"type": "Note", "id": "5"},
        "target": {"id": "grouproom1", "name": "x"},
    }
    assert await daemon.post(event) == 200
    await daemon.idle()
    assert daemon.llm.requests == []
    assert daemon.talk.messages == []


async def test_captured_fixtures_from_a_real_server_are_all_accepted(
    daemon: Daemon,
) -> None:
    """Every webhook Talk 21 delivered verifies, parses and is acknowledged with 200."""
    captures = [c for c in all_webhooks() if c.bot == "CaptureBot"]
    assert len(captures) >= 40
    for capture in captures:
        random = capture.random
        headers = {
            RANDOM_HEADER: random,
            SIGNATURE_HEADER: sign(SECRET, random, capture.raw_body),
            "Content-Type": "application/json",
        }
        assert await daemon.post(capture.raw_body, headers=headers) == 200, capture.stem


async def test_w07_backend_header_is_never_trusted(daemon: Daemon) -> None:
    body = php_json(dm_event("where do you reply?"))
    headers = signed_headers(body)
    headers["X-Nextcloud-Talk-Backend"] = "http://127.0.0.1:9/"
    daemon.llm.reply("here")
    assert await daemon.post(body, headers=headers) == 200
    await daemon.idle()
    assert daemon.talk.texts() == ["here"]


async def test_w12_bot_actor_events_are_dropped(daemon: Daemon) -> None:
    event = create_event("I am a bot", sender="bots/bot-123", room="grouproom1")
    event["actor"]["type"] = "Application"
    assert await daemon.post(event) == 200
    await daemon.idle()
    assert daemon.llm.requests == []
