"""A fake Nextcloud Talk bot API on 127.0.0.1 that checks signatures as BotController does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.nextcloud_server import FakeNextcloud

API = "/ocs/v2.php/apps/spreed/api/v1/bot"
MAX_CHAT_LENGTH = 32000
MIN_RANDOM_LENGTH = 32
PHP_TRIM = " \t\n\r\0\x0b"
TOKEN_RE = re.compile(r"^[a-z0-9]{4,30}$")
RANDOM_HEADER = "X-Nextcloud-Talk-Bot-Random"
SIGNATURE_HEADER = "X-Nextcloud-Talk-Bot-Signature"


@dataclass(frozen=True)
class SentMessage:
    """A message Talk accepted (and committed) from the bot."""

    token: str
    message: str
    reply_to: int | None
    reference_id: str | None
    silent: bool
    at: float


@dataclass(frozen=True)
class RecordedRequest:
    """Every request that reached the fake, with the status it was given."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    # The fake committed the message and then cut the connection without answering.
    dropped: bool = False
    # The client had gone before the fake answered; a held call was handled all the same.
    abandoned: bool = False

    def param(self, name: str) -> Any:
        """One parameter of the JSON or form body, None when absent."""
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        return _decode_body(content_type, self.body).get(name)


@dataclass(frozen=True)
class ReactionChange:
    action: str  # "add" or "remove"
    token: str
    message_id: int
    reaction: str
    status: int


@dataclass
class _Fault:
    status: int | None = None  # answer this status instead of handling the call
    retry_after: float | None = None
    delay: float = 0.0
    drop_after_commit: bool = False
    # Handle the call after the delay even if the client has gone (Nextcloud's throttle).
    handle_after_give_up: bool = False


@dataclass
class _Call:
    """One parsed bot API call on its way through the checks."""

    request: web.Request
    token: str
    form: dict[str, Any] = field(default_factory=dict)


class _Answer(Exception):
    """Stops handling a call with this status; control flow inside the fake."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers or {}


class FakeTalk:
    """The bot API of one Talk server; ``rooms`` None means every well-formed token."""

    def __init__(
        self, secret: str, rooms: set[str] | None = None, *, nextcloud: FakeNextcloud | None = None
    ) -> None:
        self.secret = secret
        # The provisioning API, served at the same URL as a real Nextcloud does.
        self.nextcloud = nextcloud
        self.rooms = None if rooms is None else set(rooms)
        self.messages: list[SentMessage] = []
        self.requests: list[RecordedRequest] = []
        self.reactions: dict[tuple[str, int], set[str]] = {}
        self.reaction_log: list[ReactionChange] = []
        self.delay_s = 0.0
        self._faults: deque[_Fault] = deque()
        self._in_flight = 0
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # --- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the fake Nextcloud, to give to TalkClient or the config."""
        if self._url is None:
            raise RuntimeError("FakeTalk is not started")
        return self._url

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(API + "/{token}/message", self._message)
        app.router.add_post(API + "/{token}/reaction/{message_id}", self._react)
        app.router.add_delete(API + "/{token}/reaction/{message_id}", self._unreact)
        if self.nextcloud is not None:
            self.nextcloud.install(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self._url = f"http://{host}:{port}"

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- fault modes -----------------------------------------------------------------

    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``count`` calls with ``status`` without handling them."""
        self._faults.extend(_Fault(status=status, retry_after=retry_after) for _ in range(count))

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Hold the next ``count`` calls; a call whose client gave up is not committed."""
        self._faults.extend(_Fault(delay=seconds) for _ in range(count))

    def throttle_next(self, seconds: float, count: int = 1) -> None:
        """Hold the next ``count`` calls ``seconds``, then handle them as usual even if the
        client has given up, as Nextcloud's brute-force throttle does: it sleeps before Talk
        sees the call (up to 25 s), and Talk then stores the message all the same."""
        self._faults.extend(_Fault(delay=seconds, handle_after_give_up=True) for _ in range(count))

    def drop_after_commit_next(self, count: int = 1) -> None:
        """Commit the next ``count`` messages, then cut the connection without answering."""
        self._faults.extend(_Fault(drop_after_commit=True) for _ in range(count))

    def set_rooms(self, rooms: Iterable[str] | None) -> None:
        self.rooms = None if rooms is None else set(rooms)

    # --- what the bot posted ---------------------------------------------------------

    def texts(self, token: str | None = None) -> list[str]:
        return [m.message for m in self.messages if token is None or m.token == token]

    async def wait_for_messages(
        self,
        n: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - the fake's own deadline reads better inline
    ) -> list[SentMessage]:
        """Wait until at least ``n`` messages were accepted; AssertionError on timeout."""
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: len(self.messages) >= n)
            except TimeoutError:
                got = [(m.token, m.message[:80]) for m in self.messages]
                raise AssertionError(
                    f"expected {n} messages within {timeout}s, got {got}"
                ) from None
        return list(self.messages)

    async def wait_settled(
        self,
        timeout: float = 5.0,  # noqa: ASYNC109 - the fake's own deadline reads better inline
    ) -> None:
        """Wait until no call is being handled, held ones included; AssertionError on timeout."""
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: self._in_flight == 0)
            except TimeoutError:
                raise AssertionError(
                    f"{self._in_flight} calls still being handled after {timeout}s"
                ) from None

    # --- handlers --------------------------------------------------------------------

    async def _message(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._accept_message)

    async def _react(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._add_reaction)

    async def _unreact(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._remove_reaction)

    async def _handle(
        self, request: web.Request, act: Callable[[_Call], int]
    ) -> web.StreamResponse:
        self._in_flight += 1
        try:
            return await self._handle_call(request, act)
        finally:
            self._in_flight -= 1
            await self._notify()

    async def _handle_call(
        self, request: web.Request, act: Callable[[_Call], int]
    ) -> web.StreamResponse:
        body = await request.read()
        fault = self._faults.popleft() if self._faults else _Fault()
        await self._pause(self.delay_s + fault.delay)
        transport = request.transport
        gone = transport is None or transport.is_closing()
        if gone and not fault.handle_after_give_up:
            self._record(request, body, 0)  # the client gave up before Talk answered
            return web.Response(status=499)
        try:
            _raise_fault(fault)
            call = await self._check(request, body)
            status = act(call)  # stored now, whether or not the client still waits
        except _Answer as answer:
            self._record(request, body, answer.status, abandoned=gone)
            return _ocs(answer.status, answer.headers)
        if fault.drop_after_commit and transport is not None:
            self._record(request, body, status, dropped=True)
            await self._notify()
            transport.abort()
            return web.Response(status=status)
        self._record(request, body, status, abandoned=gone)
        await self._notify()
        return _ocs(status)

    async def _check(self, request: web.Request, body: bytes) -> _Call:
        """The checks of BotController, in its order."""
        if request.headers.get("OCS-APIRequest", "").lower() != "true":
            raise _Answer(412)
        token = request.match_info["token"]
        if not TOKEN_RE.match(token):
            raise _Answer(404)  # the route requirement does not match
        call = _Call(request, token, _parse_body(request, body))
        value = call.form.get("message" if request.path.endswith("/message") else "reaction")
        if not isinstance(value, str) or not value.strip(PHP_TRIM):
            raise _Answer(400)
        self._check_signature(request, token, value)
        return call

    def _check_signature(self, request: web.Request, token: str, value: str) -> None:
        random = request.headers.get(RANDOM_HEADER)
        signature = request.headers.get(SIGNATURE_HEADER)
        if random is None or len(random) < MIN_RANDOM_LENGTH or signature is None:
            raise _Answer(400)
        if self.rooms is not None and token not in self.rooms:
            raise _Answer(401)
        mac = hmac.new(self.secret.encode(), (random + value).encode(), hashlib.sha256)
        if not hmac.compare_digest(mac.hexdigest(), signature.lower()):
            raise _Answer(401)

    def _accept_message(self, call: _Call) -> int:
        message = call.form["message"]
        if len(message.strip(PHP_TRIM)) > MAX_CHAT_LENGTH:
            raise _Answer(413)
        reply_to = _optional_int(call.form.get("replyTo"))
        reference = call.form.get("referenceId")
        sent = SentMessage(
            token=call.token,
            message=message,
            reply_to=reply_to,
            reference_id=str(reference)[:64] if reference else None,
            silent=_truthy(call.form.get("silent")),
            at=time.time(),
        )
        self.messages.append(sent)
        return 201

    def _add_reaction(self, call: _Call) -> int:
        key = (call.token, _message_id(call))
        reaction = call.form["reaction"]
        present = self.reactions.setdefault(key, set())
        status = 200 if reaction in present else 201
        present.add(reaction)
        self.reaction_log.append(ReactionChange("add", *key, reaction, status))
        return status

    def _remove_reaction(self, call: _Call) -> int:
        key = (call.token, _message_id(call))
        reaction = call.form["reaction"]
        present = self.reactions.get(key, set())
        status = 200 if reaction in present else 404
        present.discard(reaction)
        self.reaction_log.append(ReactionChange("remove", *key, reaction, status))
        if status == 404:
            raise _Answer(404)
        return status

    def _record(
        self,
        request: web.Request,
        body: bytes,
        status: int,
        *,
        dropped: bool = False,
        abandoned: bool = False,
    ) -> None:
        headers = dict(request.headers)
        self.requests.append(
            RecordedRequest(request.method, request.path, headers, body, status, dropped, abandoned)
        )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _pause(self, seconds: float) -> None:
        """A slow Talk; ends early when the fake closes so teardown never waits."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)


def _parse_body(request: web.Request, body: bytes) -> dict[str, Any]:
    """Talk takes the parameters from a JSON or a form-encoded body."""
    try:
        return _decode_body(request.content_type, body)
    except ValueError:
        raise _Answer(400) from None


def _decode_body(content_type: str, body: bytes) -> dict[str, Any]:
    if content_type == "application/json":
        parsed = json.loads(body)
        return parsed if isinstance(parsed, dict) else {}
    if content_type == "application/x-www-form-urlencoded":
        pairs = parse_qs(body.decode(), keep_blank_values=True)
        return {key: values[-1] for key, values in pairs.items()}
    return {}


def _raise_fault(fault: _Fault) -> None:
    if fault.status is not None:
        headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
        raise _Answer(fault.status, headers)


def _message_id(call: _Call) -> int:
    raw = call.request.match_info["message_id"]
    if not (raw.isascii() and raw.isdigit()):
        raise _Answer(404)
    return int(raw)


def _optional_int(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not str(value).isdigit():
        raise _Answer(400)
    return int(str(value))


def _truthy(value: object) -> bool:
    return value is True or str(value).lower() in {"1", "true"}


def _ocs(status: int, headers: dict[str, str] | None = None) -> web.Response:
    ok = status < 300
    meta = {
        "status": "ok" if ok else "failure",
        "statuscode": status,
        "message": "OK" if ok else "",
    }
    return web.json_response({"ocs": {"meta": meta, "data": None}}, status=status, headers=headers)
