"""Webhooks as Talk sends them: events built, encoded by PHP's rules and signed.

The daemon only receives webhooks; the console, the tests and the benchmarks speak for
Talk, and all of them build the bytes here so that they match a real delivery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bot.talk.signature import RANDOM_HEADER, SIGNATURE_HEADER, new_random, sign


def encode_json(value: Any) -> bytes:
    """Encode as PHP's json_encode does for Talk: ASCII only, '/' escaped, no spaces."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("/", "\\/").encode("ascii")


def person(actor_id: str, name: str, participant_type: str | None = None) -> dict[str, str]:
    """The actor of a message; ``participant_type`` is a string, as Talk sends it."""
    data = {"type": "Person", "id": actor_id, "name": name}
    if participant_type is not None:
        data["talkParticipantType"] = participant_type
    return data


def create_event(
    text: str,
    *,
    actor: Mapping[str, str],
    room: str,
    room_name: str,
    message_id: int | str,
    parameters: Mapping[str, Any] | None = None,
    reply_to: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Create event Talk sends for a chat message (its content is JSON in a string)."""
    content: dict[str, Any] = {"message": text, "parameters": parameters or []}
    note: dict[str, Any] = {
        "type": "Note",
        "id": str(message_id),
        "name": "message",
        "content": encode_json(content).decode("ascii"),
        "mediaType": "text/markdown",
    }
    if reply_to is not None:
        note["inReplyTo"] = reply_to
    return {
        "type": "Create",
        "actor": dict(actor),
        "object": note,
        "target": {"type": "Collection", "id": room, "name": room_name},
    }


def sign_webhook(secret: str, body: bytes, random: str | None = None) -> dict[str, str]:
    """The headers Talk sends with ``body``, signed with the bot's ``secret``."""
    random = random or new_random()
    return {
        "Content-Type": "application/json",
        RANDOM_HEADER: random,
        SIGNATURE_HEADER: sign(secret, random, body),
        "OCS-APIRequest": "true",
    }
