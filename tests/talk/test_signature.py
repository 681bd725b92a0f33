"""Webhook and bot API signatures (matrix W01, W02, W03), checked against real captures."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bot.talk.signature import (
    BOT_RANDOM_HEADER,
    BOT_SIGNATURE_HEADER,
    RANDOM_HEADER,
    SIGNATURE_HEADER,
    new_random,
    sign,
    sign_bot_request,
    verify_webhook,
)
from tests.talk.fixtures import (
    CAPTURE_SECRET,
    INLINE_SECRET,
    CapturedWebhook,
    all_webhooks,
    load_webhook,
)

WEBHOOKS = all_webhooks()
SECRET = CAPTURE_SECRET


def _verify(hook: CapturedWebhook, secret: str | None = None) -> bool:
    return verify_webhook(secret or hook.secret, hook.random, hook.raw_body, hook.signature)


def test_all_49_captures_are_loaded() -> None:
    assert len(WEBHOOKS) == 49
    assert {hook.bot for hook in WEBHOOKS} == {"CaptureBot", "InlineBot"}


@pytest.mark.parametrize("hook", WEBHOOKS, ids=[hook.stem for hook in WEBHOOKS])
def test_every_captured_webhook_verifies_with_its_bots_secret(hook: CapturedWebhook) -> None:
    assert _verify(hook)


@pytest.mark.parametrize("hook", WEBHOOKS, ids=[hook.stem for hook in WEBHOOKS])
def test_w01_captured_webhook_fails_with_the_other_bots_secret(hook: CapturedWebhook) -> None:
    other = INLINE_SECRET if hook.secret == CAPTURE_SECRET else CAPTURE_SECRET
    assert not _verify(hook, other)


def _flip(data: bytes, index: int, mask: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


@given(
    hook=st.sampled_from(WEBHOOKS),
    part=st.sampled_from(["body", "random", "signature"]),
    index=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
)
def test_w01_any_bit_flip_fails(hook: CapturedWebhook, part: str, index: int, mask: int) -> None:
    """W01: one changed byte anywhere in body, random or signature is rejected."""
    body, random, signature = hook.raw_body, hook.random, hook.signature
    if part == "body":
        body = _flip(body, index, mask)
    elif part == "random":
        random = _flip(random.encode(), index, mask).decode("latin-1")
    else:
        signature = _flip(signature.encode(), index, mask).decode("latin-1")
        # A hex letter changing case is the same value: Talk compares lowercased.
        assume(signature.lower() != hook.signature)
    assert not verify_webhook(hook.secret, random, body, signature)


def test_w01_missing_random_or_signature_fails() -> None:
    hook = load_webhook(3)
    assert not verify_webhook(SECRET, None, hook.raw_body, hook.signature)
    assert not verify_webhook(SECRET, hook.random, hook.raw_body, None)
    assert not verify_webhook(SECRET, "", hook.raw_body, hook.signature)
    assert not verify_webhook(SECRET, hook.random, hook.raw_body, "")


@pytest.mark.parametrize("length", [0, 32, 63, 65, 128])
def test_w01_random_not_64_chars_fails_even_when_correctly_signed(length: int) -> None:
    random = ("ab" * 64)[:length]
    body = load_webhook(3).raw_body
    assert not verify_webhook(SECRET, random, body, sign(SECRET, random, body))


def test_w01_non_ascii_random_fails_without_raising() -> None:
    random = "é" * 64
    body = b"{}"
    assert not verify_webhook(SECRET, random, body, sign(SECRET, random, body))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda sig: sig[:-1], id="63-chars"),
        pytest.param(lambda sig: sig + "0", id="65-chars"),
        pytest.param(lambda sig: sig[:-1] + "g", id="non-hex"),
        pytest.param(lambda sig: sig + "\n", id="trailing-newline"),
        pytest.param(lambda sig: " " + sig[1:], id="leading-space"),
        pytest.param(lambda sig: "sha256=" + sig, id="prefixed"),
        pytest.param(lambda _: hashlib.sha256(b"x").hexdigest(), id="other-digest"),
        pytest.param(lambda _: "é" * 64, id="non-ascii"),
    ],
)
def test_w01_malformed_or_forged_signature_fails(mangle: Callable[[str], str]) -> None:
    hook = load_webhook(3)
    assert not verify_webhook(SECRET, hook.random, hook.raw_body, mangle(hook.signature))


def test_w01_uppercase_hex_of_the_right_signature_verifies() -> None:
    hook = load_webhook(3)
    assert hook.signature != hook.signature.upper()
    assert verify_webhook(SECRET, hook.random, hook.raw_body, hook.signature.upper())


def test_w02_php_escaped_capture_verifies_but_reserialized_json_does_not() -> None:
    """W02: 006 holds \\/, \\uXXXX and an emoji surrogate pair, as PHP json_encode writes."""
    hook = load_webhook(6)
    assert b"\\/" in hook.raw_body
    assert b"\\ud83d" in hook.raw_body
    assert _verify(hook)
    parsed = json.loads(hook.raw_body)
    for reserialized in (
        json.dumps(parsed).encode(),
        json.dumps(parsed, separators=(",", ":")).encode(),
        json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode(),
    ):
        assert not verify_webhook(SECRET, hook.random, reserialized, hook.signature)


def test_w02_php_style_body_signed_by_us_verifies_only_as_raw_bytes() -> None:
    body = b'{"type":"Create","content":"caf\\u00e9 \\/ \\ud83d\\ude00"}'
    random = new_random()
    signature = sign(SECRET, random, body)
    assert verify_webhook(SECRET, random, body, signature)
    reserialized = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert not verify_webhook(SECRET, random, reserialized, signature)


def test_w03_sign_matches_the_signature_the_real_server_sent() -> None:
    hook = load_webhook(3)
    assert sign(SECRET, hook.random, hook.raw_body) == hook.signature


def test_w03_known_answer_matches_openssl_dgst() -> None:
    """W03: the doc's bash sample, `openssl dgst -sha256 -hmac SECRET` over random + body."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    hook = load_webhook(3)
    result = subprocess.run(  # noqa: S603 -- fixed argv, the resolved openssl binary
        [openssl, "dgst", "-sha256", "-hmac", SECRET],
        input=hook.random.encode() + hook.raw_body,
        capture_output=True,
        check=True,
        timeout=30,
    )
    openssl_hex = result.stdout.decode().split()[-1]
    assert openssl_hex == hook.signature
    assert sign(SECRET, hook.random, hook.raw_body) == openssl_hex


def test_sign_encodes_str_payload_as_utf8() -> None:
    value = "Grüße 🤖"
    expected = hmac.new(b"k" * 40, ("r" * 64 + value).encode(), hashlib.sha256).hexdigest()
    assert sign("k" * 40, "r" * 64, value) == expected
    assert sign("k" * 40, "r" * 64, value.encode()) == expected
    assert expected == expected.lower()


def test_new_random_is_64_chars_and_fresh_each_call() -> None:
    randoms = {new_random() for _ in range(100)}
    assert len(randoms) == 100
    assert all(len(random) == 64 and random.isascii() for random in randoms)


def test_sign_bot_request_signs_the_message_value_not_the_json_body() -> None:
    message = 'Hello "world" / ü 🤖'
    headers = sign_bot_request(SECRET, message)
    assert set(headers) == {BOT_RANDOM_HEADER, BOT_SIGNATURE_HEADER}
    random = headers[BOT_RANDOM_HEADER]
    assert len(random) >= 32
    assert headers[BOT_SIGNATURE_HEADER] == sign(SECRET, random, message)
    body = json.dumps({"message": message})
    assert headers[BOT_SIGNATURE_HEADER] != sign(SECRET, random, body)


def test_sign_bot_request_uses_a_fresh_random_every_call() -> None:
    first = sign_bot_request(SECRET, "👍")
    second = sign_bot_request(SECRET, "👍")
    assert first[BOT_RANDOM_HEADER] != second[BOT_RANDOM_HEADER]
    assert first[BOT_SIGNATURE_HEADER] != second[BOT_SIGNATURE_HEADER]


def test_header_names_are_the_ones_talk_sends_and_expects() -> None:
    """Incoming names as captured; outgoing ones carry "-Bot-" (protocol §3)."""
    names = [key for key, _ in load_webhook(2).headers]
    assert RANDOM_HEADER in names
    assert SIGNATURE_HEADER in names
    assert BOT_RANDOM_HEADER == "X-Nextcloud-Talk-Bot-Random"
    assert BOT_SIGNATURE_HEADER == "X-Nextcloud-Talk-Bot-Signature"
