"""HMAC-SHA256 signing of Talk webhooks (incoming) and bot API calls (outgoing)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

RANDOM_HEADER = "X-Nextcloud-Talk-Random"
SIGNATURE_HEADER = "X-Nextcloud-Talk-Signature"
BOT_RANDOM_HEADER = "X-Nextcloud-Talk-Bot-Random"
BOT_SIGNATURE_HEADER = "X-Nextcloud-Talk-Bot-Signature"

# Talk sends ISecureRandom::generate(64); the signature is a SHA-256 hex digest.
_RANDOM_LENGTH = 64
_SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{64}")


def sign(secret: str, random: str, payload: bytes | str) -> str:
    """Lowercase hex HMAC-SHA256 keyed with ``secret`` over ``random + payload``."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    message = random.encode("utf-8") + data
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_webhook(secret: str, random: str | None, raw_body: bytes, signature: str | None) -> bool:
    """Check an incoming webhook's signature over the raw body bytes, as Talk signed them."""
    if random is None or len(random) != _RANDOM_LENGTH or not random.isascii():
        return False
    if signature is None or _SIGNATURE_RE.fullmatch(signature) is None:
        return False
    return hmac.compare_digest(sign(secret, random, raw_body), signature.lower())


def new_random() -> str:
    """A fresh 64-character random for one outgoing call (Talk requires at least 32)."""
    return secrets.token_hex(32)


def sign_bot_request(secret: str, value: str) -> dict[str, str]:
    """The two headers for one bot API call; ``value`` is the exact message or reaction."""
    random = new_random()
    return {BOT_RANDOM_HEADER: random, BOT_SIGNATURE_HEADER: sign(secret, random, value)}
