"""The OpenAI-compatible chat client: one bounded call in, a Completion or a typed LLMError out.

A chat completion is one aiohttp POST, retried as the openai SDK retries it (the SDK is
not a runtime dependency any more: it is the reference tests/agent/test_llm_conformance.py
compares this client against).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import math
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from random import random
from typing import Any, Literal, TypeGuard
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import structlog
from yarl import URL

from bot import USER_AGENT
from bot.config import LLMSettings, strip_credentials
from bot.errors import LLMError

log = structlog.get_logger(__name__)

LLMErrorKind = Literal["unavailable", "timeout", "rate_limited", "bad_response", "auth"]
MIN_REDACTED_SECRET = 8  # shorter "keys" would mangle ordinary text
REDACTED = "[redacted]"
# Without a usage in the answer, tokens are estimated at this many characters per token
# (of the request as sent and of the answer): about right for English text and JSON.
CHARS_PER_TOKEN = 4

# The retry policy of openai-python (3.57), which this client had until it became one
# aiohttp POST: openai/_constants.py (DEFAULT_MAX_RETRIES, INITIAL_RETRY_DELAY,
# MAX_RETRY_DELAY, MAX_RETRY_AFTER_DELAY) and openai/_base_client.py
# (AsyncAPIClient.request's loop, _should_retry, _calculate_retry_timeout,
# _parse_retry_after_header). Retried: connection errors, and HTTP 408, 409, 429 and
# >= 500, unless the server says otherwise (x-should-retry) or asks for more than
# MAX_RETRY_AFTER_DELAY; the wait is the server's Retry-After when it is positive and at
# most MAX_RETRY_AFTER_DELAY, else an exponential backoff with jitter.
MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER_DELAY = 2 * 60
RETRIED_STATUSES = frozenset({408, 409, 429})  # and every status >= 500
_INFINITY_LITERALS = ("inf", "+inf", "infinity", "+infinity")
# The connection pool as the SDK's aiohttp transport had it (DEFAULT_CONNECTION_LIMITS):
# [llm] concurrency (at most 256) bounds the requests in flight, not the pool.
MAX_CONNECTIONS = 1000
KEEPALIVE_S = 5.0


class LLMCallError(LLMError):
    """An LLMError with the ``kind`` the user notice is chosen by."""

    def __init__(self, kind: LLMErrorKind, reason: str) -> None:
        self.kind: LLMErrorKind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


@dataclass(frozen=True)
class ToolCallRequest:
    id: str | None  # None when the server sent none; the loop assigns one
    name: str
    arguments: str  # as the model wrote it; may be anything


@dataclass(frozen=True)
class Usage:
    """Tokens of one or more model requests; ``estimated`` when a server sent no figures."""

    prompt: int = 0
    completion: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt + other.prompt,
            self.completion + other.completion,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True)
class Completion:
    text: str | None
    tool_calls: tuple[ToolCallRequest, ...]
    finish_reason: str | None
    # What the request cost; not part of what the answer is.
    usage: Usage = field(default=Usage(), compare=False)


def endpoint_url(settings: LLMSettings) -> str:
    """The API base URL: Open WebUI serves chat completions under /api."""
    return f"{settings.base_url}/api" if settings.flavor == "openwebui" else settings.base_url


def split_basic_auth(url: str) -> tuple[str, str | None]:
    """The URL without its user:password@, and that part as a Basic Authorization value."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    token = base64.b64encode(pair.encode("utf-8")).decode("ascii")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (http_proxy, https_proxy, all_proxy,
    no_proxy), as the SDK's httpx client (trust_env) used it; None for none."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class LLM:
    """One chat-completions endpoint. ``timeout_s`` bounds each call, retries included."""

    def __init__(self, settings: LLMSettings) -> None:
        self._model = settings.model
        self._max_tokens = settings.max_tokens
        self._timeout_s = settings.timeout_s
        self._secret = settings.api_key.get_secret_value()
        # The key as it would appear inside a JSON string of the request.
        self._secret_in_json = json.dumps(self._secret, ensure_ascii=False)[1:-1]
        self._where = strip_credentials(endpoint_url(settings))  # for errors: never a key
        url, basic = split_basic_auth(endpoint_url(settings))
        # A user:password@ in the URL is sent as Basic auth, never in the URL itself;
        # else a Bearer token, "not-needed" for servers without keys (as the SDK sent it).
        self._url = URL(f"{url}/chat/completions")
        self._headers = {
            "Authorization": basic or f"Bearer {self._secret or 'not-needed'}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        proxy = env_proxy(str(self._url))
        self._proxy = URL(proxy).with_user(None) if proxy else None
        self._proxy_auth = aiohttp.BasicAuth.from_url(URL(proxy)) if proxy else None
        # Made on the first call, inside the running loop: the composition root may build
        # this client before there is one.
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._calls = 0  # under way: a closed client lets them finish

    async def aclose(self) -> None:
        """No new call; the connections close once the calls under way have ended
        (``!reload`` swaps the client while turns may be waiting on this one)."""
        self._closed = True
        if self._calls == 0:
            await self._close_session()

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Completion:
        payload: dict[str, Any] = {"model": self._model, "messages": messages}
        if tools:  # many servers reject an empty list
            payload["tools"] = tools
        if self._max_tokens is not None:
            payload["max_tokens"] = self._max_tokens
        started = time.perf_counter()
        try:
            payload, request = self._without_secret(payload)
            body = await self._post(request)
            completion = parse_completion(body, payload)
        except LLMCallError as exc:
            log.warning("llm.failed", kind=exc.kind, reason=exc.reason, ms=_ms_since(started))
            raise
        log.info(
            "llm.done",
            finish=completion.finish_reason,
            tool_calls=len(completion.tool_calls),
            prompt_tokens=completion.usage.prompt,
            completion_tokens=completion.usage.completion,
            estimated=completion.usage.estimated,
            ms=_ms_since(started),
        )
        return completion

    async def _post(self, request: bytes) -> bytes:
        if self._closed:
            raise LLMCallError("unavailable", "the model client was closed")
        self._calls += 1
        try:
            async with asyncio.timeout(self._timeout_s):  # retries and their waits included
                return await self._send(request)
        except TimeoutError:
            raise LLMCallError("timeout", f"no answer within {self._timeout_s:g} s") from None
        finally:
            self._calls -= 1
            if self._closed and self._calls == 0:  # the last call of a client closed meanwhile
                await self._close_session()

    async def _send(self, request: bytes) -> bytes:
        """The body of a 2xx answer, retried as AsyncAPIClient.request retries."""
        for retries_taken in range(MAX_RETRIES + 1):
            retries_left = retries_taken < MAX_RETRIES
            try:
                async with self._open().post(
                    self._url,
                    data=request,
                    proxy=self._proxy,
                    proxy_auth=self._proxy_auth,
                    allow_redirects=False,  # as the SDK (httpx): a redirect is an answer
                ) as response:
                    # Read within the attempt, as the SDK did (it does not stream): a
                    # connection lost in the body is retried like any other.
                    body = await response.read()
            except aiohttp.ClientError as exc:
                if retries_left:
                    await asyncio.sleep(retry_delay(retries_taken, None))
                    continue
                raise _connection_error(exc, self._where) from None
            status = response.status
            if 200 <= status < 300:  # noqa: PLR2004 - httpx's is_success
                return body
            if retries_left and should_retry(status, response.headers):
                await asyncio.sleep(retry_delay(retries_taken, response.headers))
                continue
            raise _status_error(status)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S
                ),
                headers=self._headers,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(),  # _post's deadline bounds the whole call
                trust_env=False,  # the proxy is read once (env_proxy); no ~/.netrc
            )
        return self._session

    def _without_secret(self, payload: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The payload as sent and its JSON: the API key never goes into a prompt,
        whatever put it into the messages."""
        text = _dumps(payload)
        secret = self._secret
        if len(secret) < MIN_REDACTED_SECRET or self._secret_in_json not in text:
            return payload, text.encode()
        log.warning("llm.secret_redacted")
        redacted: dict[str, Any] = _redact(payload, secret)
        return redacted, _dumps(redacted).encode()


def _dumps(payload: dict[str, Any]) -> str:
    """JSON as the SDK sent it (openai/_utils/_json.py openapi_dumps)."""
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:  # NaN, or something not JSON: a bug upstream
        raise LLMCallError("bad_response", f"the request is not JSON ({exc})") from None


def _redact(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, dict):
        return {key: _redact(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, secret) for item in value]
    return value


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asks to wait, or None: _parse_retry_after_header.

    retry-after-ms, then retry-after as a number of seconds (floats allowed), then
    retry-after as an HTTP date. A number too large for a float counts as more than
    MAX_RETRY_AFTER_DELAY; a written "inf" as infinite (and so ignored)."""
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        if delay == math.inf and value.strip().lower() not in _INFINITY_LITERALS:
            return MAX_RETRY_AFTER_DELAY + 1
        return delay / divisor
    try:
        parsed = email.utils.parsedate_tz(headers.get("retry-after"))
        if parsed is None:
            return None
        retry_date = email.utils.mktime_tz(parsed)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return float(retry_date - time.time())


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """Whether an error answer is worth another attempt: _should_retry."""
    wait = retry_after(headers)
    if wait is not None and math.isfinite(wait) and wait > MAX_RETRY_AFTER_DELAY:
        return False  # the server asks for longer than anyone waits
    explicit = headers.get("x-should-retry")
    if explicit == "true":
        return True
    if explicit == "false":
        return False
    return status in RETRIED_STATUSES or status >= 500  # noqa: PLR2004 - HTTP status class


def retry_delay(retries_taken: int, headers: Mapping[str, str] | None) -> float:
    """Seconds before the next attempt: _calculate_retry_timeout."""
    wait = retry_after(headers)
    if wait is not None and math.isfinite(wait) and 0 < wait <= MAX_RETRY_AFTER_DELAY:
        return wait
    backoff = min(INITIAL_RETRY_DELAY * pow(2.0, min(retries_taken, 1000)), MAX_RETRY_DELAY)
    return max(backoff * (1 - 0.25 * random()), 0)  # noqa: S311 - jitter: up to 25 % less


def _status_error(status: int) -> LLMCallError:
    if status in (401, 403):
        return LLMCallError("auth", f"the model server refused the credentials (HTTP {status})")
    if status == 429:  # noqa: PLR2004 - HTTP status
        return LLMCallError("rate_limited", "the model server is rate limiting (HTTP 429)")
    if status >= 500:  # noqa: PLR2004 - HTTP status class
        return LLMCallError("unavailable", f"the model server failed (HTTP {status})")
    return LLMCallError("bad_response", f"the model server rejected the request (HTTP {status})")


def _connection_error(exc: aiohttp.ClientError, where: str) -> LLMCallError:
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unresolvable, TLS refused
        return LLMCallError("unavailable", f"cannot connect to the model server at {where}")
    return LLMCallError("unavailable", "lost the connection to the model server")


def parse_completion(body: bytes, request: dict[str, Any] | None = None) -> Completion:
    """The first choice of a chat.completion body; anything else is a bad_response.

    Its usage is the body's; when the server sent none (or nonsense), an estimate from
    ``request`` (the payload as sent) and the answer, marked as estimated.
    """
    try:
        data = json.loads(body)
    except ValueError:
        raise LLMCallError("bad_response", "the answer is not JSON") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMCallError("bad_response", "the answer has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise LLMCallError("bad_response", "the answer has no message")
    content = message.get("content")
    finish = choices[0].get("finish_reason")
    text = content if isinstance(content, str) else None
    tool_calls = _parse_tool_calls(message.get("tool_calls"))
    usage = _reported_usage(data.get("usage")) or _estimated_usage(request, text, tool_calls)
    return Completion(
        text=text,
        tool_calls=tool_calls,
        finish_reason=finish if isinstance(finish, str) else None,
        usage=usage,
    )


def _reported_usage(raw: Any) -> Usage | None:
    """OpenAI's prompt_tokens/completion_tokens, or input_tokens/output_tokens; None
    unless both are there as non-negative whole numbers."""
    if not isinstance(raw, dict):
        return None
    for prompt_key, completion_key in (
        ("prompt_tokens", "completion_tokens"),
        ("input_tokens", "output_tokens"),
    ):
        prompt, completion = raw.get(prompt_key), raw.get(completion_key)
        if _is_count(prompt) and _is_count(completion):
            return Usage(prompt, completion)
    return None


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _estimated_usage(
    request: dict[str, Any] | None, text: str | None, calls: tuple[ToolCallRequest, ...]
) -> Usage:
    """About CHARS_PER_TOKEN characters per token of the messages and tools sent and of
    the answer; rounded up, so an estimate never hides a request."""
    sent = request or {}
    prompt_chars = sum(
        len(json.dumps(sent[key], ensure_ascii=False))
        for key in ("messages", "tools")
        if sent.get(key)
    )
    answer_chars = len(text or "") + sum(len(call.name) + len(call.arguments) for call in calls)
    return Usage(-(-prompt_chars // CHARS_PER_TOKEN), -(-answer_chars // CHARS_PER_TOKEN), True)


def _parse_tool_calls(raw: Any) -> tuple[ToolCallRequest, ...]:
    if not isinstance(raw, list):
        return ()
    calls = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            continue
        name, arguments, call_id = function.get("name"), function.get("arguments"), item.get("id")
        if not isinstance(arguments, str):
            # Some servers send the arguments as an object; keep everything a string.
            arguments = "" if arguments is None else json.dumps(arguments)
        calls.append(
            ToolCallRequest(
                id=call_id if isinstance(call_id, str) and call_id else None,
                name=name if isinstance(name, str) else "",
                arguments=arguments,
            )
        )
    return tuple(calls)


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
