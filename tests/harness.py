"""The running daemon in a test: the real app, the fake Talk and the scripted model."""

from __future__ import annotations

import io
import itertools
import json
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.clock import Clock, ManualClock
from bot.config import Settings, settings_from_mapping
from bot.lifecycle import build_app
from bot.logs import LogRing, Redactor
from bot.runtime import Runtime, new_runtime
from bot.talk import webhooks
from bot.tools import Tool
from bot.tools.netguard import AddressPolicy
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk

SECRET = "s3cret-for-tests-only-0123456789abcdefghijkl"
API_KEY = "sk-test-canary-api-key-0123456789"
GROUP = "grouproom1"
# A one-to-one room whose owner said `!mode all` (DESIGN.md §4): the harness's private
# chat with the bot, where every message is a turn. A one-to-one room without it follows
# the mention rule like any room (tests/handlers/test_chat.py covers that).
ONE2ONE = "dmroom01"
ADMIN_ROOM = "adminroom1"
_ids = itertools.count(100)


# Talk's encoding under the name the tests use for it.
php_json = webhooks.encode_json


def actor(uid: str, name: str | None = None, participant_type: str | None = "3") -> dict[str, str]:
    actor_id = uid if "/" in uid else f"users/{uid}"
    return webhooks.person(
        actor_id,
        name if name is not None else uid.rsplit("/", maxsplit=1)[-1].title(),
        participant_type,
    )


def create_event(
    text: str,
    *,
    sender: str = "alice",
    room: str = GROUP,
    room_name: str = "Project room",
    message_id: int | None = None,
    participant_type: str | None = "3",
    reply_to: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return webhooks.create_event(
        text,
        actor=actor(sender, participant_type=participant_type),
        room=room,
        room_name=room_name,
        message_id=message_id if message_id is not None else next(_ids),
        parameters=parameters,
        reply_to=reply_to,
    )


def dm_event(text: str, *, sender: str = "alice", other: str = "bob", **kw: Any) -> dict[str, Any]:
    names = sorted([sender.rsplit("/", maxsplit=1)[-1], other])
    return create_event(text, sender=sender, room=ONE2ONE, room_name=json.dumps(names), **kw)


def join_event(room: str = GROUP, name: str = "Project room") -> dict[str, Any]:
    return {
        "type": "Join",
        "actor": {"type": "Application", "id": "bots/bot-abc", "name": "talkbot"},
        "object": {"type": "Collection", "id": room, "name": name},
    }


def signed_headers(body: bytes, secret: str = SECRET, random: str | None = None) -> dict[str, str]:
    return webhooks.sign_webhook(secret, body, random)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_config(tmp_path: Path, talk: FakeTalk, llm: FakeLLM, port: int = 0) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "nextcloud": {"url": talk.url, "bot_secret": SECRET},
        "llm": {
            "base_url": llm.base_url,
            "api_key": API_KEY,
            "model": "test-model",
            "timeout_s": 5,
        },
        "access": {"admins": ["root"], "admin_room": ADMIN_ROOM},
        "chat": {"bot_name": "talkbot"},
        "storage": {"path": str(tmp_path / "talkbot.sqlite3")},
        "tools": {"files": {"root": str(tmp_path / "files")}},
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Daemon:
    """One running talkbot app on 127.0.0.1 with its fakes."""

    def __init__(
        self,
        runtime: Runtime,
        url: str,
        session: aiohttp.ClientSession,
        talk: FakeTalk,
        llm: FakeLLM,
    ) -> None:
        self.runtime = runtime
        self.url = url
        self.session = session
        self.talk = talk
        self.llm = llm

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    async def post(
        self,
        event: dict[str, Any] | bytes,
        *,
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
    ) -> int:
        body = event if isinstance(event, bytes) else php_json(event)
        sent = headers if headers is not None else signed_headers(body, secret)
        path = self.settings.server.webhook_path
        data: Any = io.BytesIO(body) if len(body) > 1024 * 1024 else body
        async with self.session.post(f"{self.url}{path}", data=data, headers=sent) as resp:
            return resp.status

    async def idle(self) -> None:
        await self.runtime.running.dispatcher.wait_idle()

    async def say(self, event: dict[str, Any]) -> list[str]:
        """Post a webhook and wait until the daemon has handled it; new Talk texts."""
        before = len(self.talk.messages)
        assert await self.post(event) == 200
        await self.idle()
        return [m.message for m in self.talk.messages[before:]]


@asynccontextmanager
async def running_daemon(
    tmp_path: Path,
    talk: FakeTalk,
    llm: FakeLLM,
    extra: dict[str, Any] | None = None,
    clock: Clock | None = None,
    *,
    extra_tools: Sequence[Tool[Any]] = (),
    fetch_policy: AddressPolicy | None = None,
    logging_to: tuple[LogRing, Redactor] | None = None,
) -> AsyncIterator[Daemon]:
    """``extra_tools`` are added to the configured ones (a test's own dangerous tool...);
    ``fetch_policy`` lets http_fetch reach a loopback test server; ``logging_to`` is the
    ring and redactor of a logging pipeline the test configured (the daemon's secrets are
    added to that redactor, as the CLI's are)."""
    settings = settings_from_mapping(merge(base_config(tmp_path, talk, llm), extra or {}), {})
    ring, redactor = logging_to or (None, None)
    runtime = new_runtime(
        settings,
        clock=clock or ManualClock(),
        extra_tools=extra_tools,
        fetch_policy=fetch_policy,
        ring=ring,
        redactor=redactor,
    )
    app = build_app(runtime)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await runtime.running.store.set_room_mode(ONE2ONE, "all")
    try:
        async with aiohttp.ClientSession() as session:
            yield Daemon(runtime, f"http://127.0.0.1:{port}", session, talk, llm)
    finally:
        await runner.cleanup()
