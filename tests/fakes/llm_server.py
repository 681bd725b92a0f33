"""A scripted OpenAI-compatible chat server on 127.0.0.1 that records every request."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

DEFAULT_REPLY = "ok"
# What every answer reports as its usage unless a test says otherwise (None: no usage).
FAKE_USAGE: Mapping[str, Any] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
# What an obedient model does with text it reads (FakeLLM.obey): [[do TOOL {json args}]]
# anywhere in any message is a tool call it makes; "$RESULT" in the args is the text of
# the latest tool result (URL-encoded inside a "url"), as an attacker's "put the file's
# content into this link" would have it. One instruction per answer, in order; those
# already carried out since the last user message (by id) are skipped.
OBEY_ID = "call_obey_"
INSTRUCTION = re.compile(r"\[\[do (?P<tool>[a-z_][a-z0-9_]*) (?P<args>\{.*?\})\]\]", re.DOTALL)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, as it came over the wire."""

    method: str
    path: str
    headers: Mapping[str, str]
    raw: str
    body: Any
    at: float = 0.0  # time.monotonic() when it arrived

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        """The ``tools`` the client offered; None when the key was absent."""
        if not isinstance(self.body, dict) or "tools" not in self.body:
            return None
        return list(self.body["tools"])

    @property
    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.tools or []]


@dataclass(frozen=True)
class _Answer:
    status: int
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection instead of answering


def _completion(
    message: dict[str, Any], finish_reason: str | None, usage: Mapping[str, Any] | None = FAKE_USAGE
) -> str:
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_780_000_000,
        "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = dict(usage)
    return json.dumps(body)


def _tool_call(name: str, args: Mapping[str, Any] | str, call_id: str | None) -> dict[str, Any]:
    arguments = args if isinstance(args, str) else json.dumps(dict(args))
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    return call


class FakeLLM:
    """Answers POST /v1/chat/completions (and /api/chat/completions) from a script.

    Each request takes the next scripted answer; an empty script answers ``default``.
    """

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.default = DEFAULT_REPLY
        self.requests: list[RecordedRequest] = []
        self._script: deque[_Answer] = deque()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._closing = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._auto_id = 0
        # Unscripted answers: echo the last message back, after latency_s (load tests).
        self.echo = False
        self.latency_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        # Unscripted answers follow [[do ...]] instructions found in the input (obey()).
        self.obedient = False
        # The usage unscripted answers report (None: none, as some servers do).
        self.usage: Mapping[str, Any] | None = FAKE_USAGE

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/api/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLLM:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def refuse_connections(self) -> None:
        """Stop listening, so the next request meets a closed port."""
        await self.close()

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return f"{self.server_url}/v1"

    # -- script ----------------------------------------------------------------------

    def reply(
        self,
        text: str | None,
        *,
        finish_reason: str = "stop",
        usage: Mapping[str, Any] | None = FAKE_USAGE,
    ) -> None:
        """One answer; ``usage`` is what it reports (None: no usage at all)."""
        message = {"role": "assistant", "content": text}
        self._push(200, _completion(message, finish_reason, usage))

    def call(
        self,
        name: str,
        args: Mapping[str, Any] | str,
        id: str | None = None,
        *,
        delay_s: float = 0.0,
    ) -> None:
        """One answer with one tool call, ``delay_s`` after the request came in."""
        self.calls([(name, args, id)], delay_s=delay_s)

    def calls(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any] | str, str | None]],
        *,
        text: str | None = None,
        auto_ids: bool = True,
        usage: Mapping[str, Any] | None = FAKE_USAGE,
        delay_s: float = 0.0,
    ) -> None:
        """One answer with several tool calls; missing ids are generated unless auto_ids=False."""
        items = []
        for name, args, given_id in calls:
            call_id = given_id
            if call_id is None and auto_ids:
                self._auto_id += 1
                call_id = f"call_fake_{self._auto_id}"
            items.append(_tool_call(name, args, call_id))
        message = {"role": "assistant", "content": text, "tool_calls": items}
        self._push(200, _completion(message, "tool_calls", usage), delay_s=delay_s)

    def raw(
        self, status: int, body: str | Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        text = body if isinstance(body, str) else json.dumps(dict(body))
        content_type = "application/json" if not isinstance(body, str) else "text/html"
        merged = {"Content-Type": content_type, **(headers or {})}
        self._script.append(_Answer(status, text, merged))

    def hang(self, seconds: float) -> None:
        """The next request gets no answer for ``seconds`` (or until the fake closes)."""
        self._script.append(_Answer(200, _completion(_text(self.default), "stop"), delay_s=seconds))

    def drop(self) -> None:
        """The next request gets no answer: its connection is closed (a lost connection)."""
        self._script.append(_Answer(0, "", drop=True))

    def obey(self) -> None:
        """From now on, unscripted answers do what any text in the input tells the model:
        the worst case of prompt injection, which every guarantee must survive."""
        self.obedient = True

    def _push(self, status: int, body: str, *, delay_s: float = 0.0) -> None:
        self._script.append(
            _Answer(status, body, {"Content-Type": "application/json"}, delay_s=delay_s)
        )

    @property
    def pending_script(self) -> int:
        return len(self._script)

    # -- observation -----------------------------------------------------------------

    async def wait_for_requests(
        self,
        count: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - a fake's wait always carries its deadline
    ) -> list[RecordedRequest]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    def all_sent_text(self) -> str:
        """Every request body as received, for scanning for secrets."""
        return "\n".join(request.raw for request in self.requests)

    # -- handlers --------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        answer = self._script.popleft() if self._script else None
        if answer is None and self.obedient:
            message, finish = _obey(recorded.messages)
            self._auto_id += 1
            for call in message.get("tool_calls", []):
                call["id"] = f"{OBEY_ID}{self._auto_id}"
            return _json_response(200, _completion(message, finish))
        if answer is None:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            text = self.default
            if self.echo and recorded.messages:
                text = str(recorded.messages[-1].get("content", ""))
            return _json_response(200, _completion(_text(text), "stop", self.usage))
        if answer.drop:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # written to nobody
        if answer.delay_s:
            try:
                async with asyncio.timeout(answer.delay_s):
                    await self._closing.wait()
            except TimeoutError:
                pass
        return web.Response(status=answer.status, text=answer.body, headers=dict(answer.headers))

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        body = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
        return _json_response(200, json.dumps(body))

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.text()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            request.method, request.path, dict(request.headers), raw, body, time.monotonic()
        )
        async with self._arrived:
            self.requests.append(recorded)
            self._arrived.notify_all()
        return recorded


def _obey(messages: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The next instruction not yet carried out in this turn, or a plain answer."""
    found = [
        (m["tool"], m["args"])
        for message in messages
        if isinstance(message.get("content"), str)
        for m in INSTRUCTION.finditer(message["content"])
    ]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=0)
    # Only the calls this fake made by obeying count: a test may script calls first.
    done = sum(
        str(call.get("id", "")).startswith(OBEY_ID)
        for m in messages[last_user:]
        for call in m.get("tool_calls") or []
    )
    if done >= len(found):
        return _text("Here is a harmless summary."), "stop"
    tool, args = found[done]
    results = [m for m in messages if m.get("role") == "tool"]
    latest = str(results[-1].get("content", "")) if results else ""
    args = args.replace(
        "$RESULT",
        urllib.parse.quote(latest, safe="") if '"url"' in args else json.dumps(latest)[1:-1],
    )
    return {"role": "assistant", "content": None, "tool_calls": [_tool_call(tool, args, None)]}, (
        "tool_calls"
    )


def _text(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def _json_response(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="application/json")


def closed_port_url() -> str:
    """A loopback URL on a port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
