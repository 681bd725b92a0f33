"""The webhooks the console, tests and benchmarks send match Talk's deliveries byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.talk.signature import RANDOM_HEADER, SIGNATURE_HEADER, verify_webhook
from bot.talk.webhooks import create_event, encode_json, person, sign_webhook
from tests.talk.fixtures import CapturedWebhook, all_webhooks, load_webhook

WEBHOOKS = all_webhooks()


@pytest.mark.parametrize("hook", WEBHOOKS, ids=[hook.stem for hook in WEBHOOKS])
def test_every_capture_encodes_to_the_bytes_talk_sent(hook: CapturedWebhook) -> None:
    assert encode_json(json.loads(hook.raw_body)) == hook.raw_body


def _rebuilt(hook: CapturedWebhook) -> dict[str, Any]:
    body = hook.body_json
    who, note, room = body["actor"], body["object"], body["target"]
    content = json.loads(note["content"])
    return create_event(
        content["message"],
        actor=person(who["id"], who["name"], who.get("talkParticipantType")),
        room=room["id"],
        room_name=room["name"],
        message_id=int(note["id"]),
        parameters=content["parameters"],
        reply_to=note.get("inReplyTo"),
    )


@pytest.mark.parametrize(
    "seq",
    [
        2,  # a plain message from a moderator
        3,  # a mention: parameters are an object
        5,  # a reply: inReplyTo after mediaType
        6,  # markdown, non-ASCII, an emoji, quotes, a backslash and slashes in the text
    ],
)
def test_create_event_rebuilds_a_captured_message_byte_for_byte(seq: int) -> None:
    hook = load_webhook(seq)
    assert encode_json(_rebuilt(hook)) == hook.raw_body


def test_signed_headers_match_talks_and_verify() -> None:
    hook = load_webhook(3)
    headers = sign_webhook(hook.secret, hook.raw_body, hook.random)
    assert headers[SIGNATURE_HEADER] == hook.signature
    sent = {key: hook.header(key) for key in ("Content-Type", RANDOM_HEADER, "OCS-APIRequest")}
    assert {key: headers[key] for key in sent} == sent


def test_a_fresh_random_signs_each_body_verifiably() -> None:
    body = encode_json(
        create_event("hi", actor=person("users/a", "A"), room="r", room_name="R", message_id=1)
    )
    first, second = sign_webhook("secret", body), sign_webhook("secret", body)
    assert first[RANDOM_HEADER] != second[RANDOM_HEADER]
    for headers in (first, second):
        assert verify_webhook("secret", headers[RANDOM_HEADER], body, headers[SIGNATURE_HEADER])
