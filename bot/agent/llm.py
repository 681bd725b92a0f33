"""The OpenAI-compatible chat client: one bounded call in, a Completion or a typed LLMError out."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeGuard
from urllib.parse import unquote, urlsplit, urlunsplit

import structlog

from bot.config import LLMSettings, strip_credentials
from bot.errors import LLMError

if TYPE_CHECKING:  # the SDK is imported when a client is made: 0.3 s no CLI command needs
    import openai

log = structlog.get_logger(__name__)

LLMErrorKind = Literal["unavailable", "timeout", "rate_limited", "bad_response", "auth"]
MAX_RETRIES = 2  # the SDK retries 408/409/429/5xx and connection errors, honouring Retry-After
MIN_REDACTED_SECRET = 8  # shorter "keys" would mangle ordinary text
REDACTED = "[redacted]"
# Without a usage in the answer, tokens are estimated at this many characters per token
# (of the request as sent and of the answer): about right for English text and JSON.
CHARS_PER_TOKEN = 4


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
    """The SDK base URL: Open WebUI serves chat completions under /api."""
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


class LLM:
    """One chat-completions endpoint. ``timeout_s`` bounds each call, retries included."""

    def __init__(self, settings: LLMSettings) -> None:
        self._model = settings.model
        self._max_tokens = settings.max_tokens
        self._timeout_s = settings.timeout_s
        self._secret = settings.api_key.get_secret_value()
        self._where = strip_credentials(endpoint_url(settings))  # for errors: never a key
        url, basic = split_basic_auth(endpoint_url(settings))
        import openai  # noqa: PLC0415 - see TYPE_CHECKING above

        self._client = openai.AsyncOpenAI(
            base_url=url,
            api_key=self._secret or "not-needed",
            timeout=settings.timeout_s,
            max_retries=MAX_RETRIES,
            http_client=openai.DefaultAioHttpClient(timeout=settings.timeout_s),
            # A password in the URL would make aiohttp refuse every request (it will not
            # send credentials from the URL next to the SDK's Authorization header).
            default_headers={"Authorization": basic} if basic else None,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Completion:
        payload: dict[str, Any] = {"model": self._model, "messages": messages}
        if tools:  # many servers reject an empty list
            payload["tools"] = tools
        if self._max_tokens is not None:
            payload["max_tokens"] = self._max_tokens
        payload = self._without_secret(payload)
        started = time.perf_counter()
        try:
            body = await self._post(payload)
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

    async def _post(self, payload: dict[str, Any]) -> bytes:
        import httpx2  # noqa: PLC0415 - loaded with the SDK, which __init__ imported
        import openai  # noqa: PLC0415

        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.post(
                    "/chat/completions", body=payload, cast_to=httpx2.Response
                )
                return await response.aread()
        except TimeoutError:
            raise LLMCallError("timeout", f"no answer within {self._timeout_s:g} s") from None
        except openai.APIStatusError as exc:
            raise _status_error(exc.status_code) from None
        except openai.APIConnectionError as exc:
            raise _connection_error(exc, self._where) from None
        except openai.OpenAIError as exc:
            raise LLMCallError("bad_response", type(exc).__name__) from None

    def _without_secret(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The API key never goes into a prompt, whatever put it into the messages."""
        secret = self._secret
        if len(secret) < MIN_REDACTED_SECRET or secret not in json.dumps(payload):
            return payload
        log.warning("llm.secret_redacted")
        redacted: dict[str, Any] = _redact(payload, secret)
        return redacted


def _redact(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, dict):
        return {key: _redact(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, secret) for item in value]
    return value


def _status_error(status: int) -> LLMCallError:
    if status in (401, 403):
        return LLMCallError("auth", f"the model server refused the credentials (HTTP {status})")
    if status == 429:  # noqa: PLR2004 - HTTP status
        return LLMCallError("rate_limited", "the model server is rate limiting (HTTP 429)")
    if status >= 500:  # noqa: PLR2004 - HTTP status class
        return LLMCallError("unavailable", f"the model server failed (HTTP {status})")
    return LLMCallError("bad_response", f"the model server rejected the request (HTTP {status})")


def _connection_error(exc: openai.APIConnectionError, where: str) -> LLMCallError:
    # The aiohttp transport reports a refused connection as a connect *timeout*;
    # the OSError underneath tells the two apart.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return LLMCallError("unavailable", f"cannot connect to the model server at {where}")
        cause = cause.__cause__ or cause.__context__
    import openai  # noqa: PLC0415 - loaded already: exc is one of its errors

    if isinstance(exc, openai.APITimeoutError):
        return LLMCallError("timeout", "the model server did not answer in time")
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
