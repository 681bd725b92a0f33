"""Loads the real Talk webhooks captured in tests/fixtures/talk/webhooks (see its README)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEBHOOK_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "talk" / "webhooks"

# Throwaway secrets of the two bots on the capture server (fixtures README table).
CAPTURE_SECRET = "1DBFoKz9GeAMirfly367JOG8kr92qMVBN4YdlTZutM3qtIW1WiEIuAd6RrJGZhYhoThQtYxQNTymiP1f"
INLINE_SECRET = (
    "drytDZ89sbZjcIdrM10Oic11BZGwHlowVaJOoiiwRrraFM6qXSpn40dr1SG1B87"
    "R0i8Gm1Detgbd8q2FtFmAbGHzWdQTES60RXUE"
)
CAPTURE_URL = "http://127.0.0.1:8099/webhook"
INLINE_URL = "http://127.0.0.1:8098/hook"
SECRETS = {"CaptureBot": CAPTURE_SECRET, "InlineBot": INLINE_SECRET}

# Set by the HTTP client itself when a test posts the body again.
_TRANSPORT_HEADERS = frozenset({"host", "content-length", "accept-encoding"})


@dataclass(frozen=True)
class CapturedWebhook:
    """One delivery exactly as Talk 21.0.4 sent it, with the receiving bot's secret."""

    seq: int
    stem: str
    type: str
    bot: str
    secret: str
    headers: tuple[tuple[str, str], ...]
    raw_body: bytes
    body_json: dict[str, Any]
    triggered_by: str

    def header(self, name: str) -> str:
        """The captured value of one header, looked up case-insensitively."""
        return next(value for key, value in self.headers if key.lower() == name.lower())

    @property
    def random(self) -> str:
        return self.header("X-Nextcloud-Talk-Random")

    @property
    def signature(self) -> str:
        return self.header("X-Nextcloud-Talk-Signature")

    @property
    def post_headers(self) -> dict[str, str]:
        """The headers to replay this delivery with an HTTP client (transport ones dropped)."""
        return {key: value for key, value in self.headers if key.lower() not in _TRANSPORT_HEADERS}


def load_webhook(seq: int | str) -> CapturedWebhook:
    """A delivery by its number: ``3``, ``"003"`` or ``"003-Create"``."""
    number = int(str(seq).split("-", 1)[0])
    matches = sorted(WEBHOOK_DIR.glob(f"{number:03d}-*.json"))
    if len(matches) != 1:
        raise LookupError(f"no captured webhook number {number}")
    return _load(matches[0])


def all_webhooks() -> list[CapturedWebhook]:
    """Every captured delivery, in the order Talk sent them."""
    return [_load(path) for path in sorted(WEBHOOK_DIR.glob("*.json"))]


def _load(path: Path) -> CapturedWebhook:
    data = json.loads(path.read_text(encoding="utf-8"))
    stem = path.name.removesuffix(".json")
    return CapturedWebhook(
        seq=int(data["seq"]),
        stem=stem,
        type=stem.split("-", 1)[1],
        bot=data["bot"],
        secret=SECRETS[data["bot"]],
        headers=tuple((key, value) for key, value in data["headers"]),
        raw_body=path.with_name(f"{stem}.body.raw").read_bytes(),
        body_json=data["body_json"],
        triggered_by=data["triggered_by"],
    )
