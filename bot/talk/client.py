"""Outgoing Talk bot API calls: signed messages and reactions, split, retried, typed errors."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog

from bot.clock import Clock, SystemClock
from bot.config import TOKEN_PATTERN
from bot.errors import (
    TalkAuthError,
    TalkError,
    TalkOutcomeUnknownError,
    TalkRateLimitedError,
    TalkRejectedError,
    TalkUnavailableError,
)
from bot.talk.signature import sign_bot_request
from bot.talk.splitting import split_message

log = structlog.get_logger(__name__)

API_PATH = "/ocs/v2.php/apps/spreed/api/v1/bot"
MAX_REFERENCE_ID = 64  # Talk cuts referenceId to 64 characters
MESSAGE_ID_PATTERN = re.compile(r"^[0-9]+$")
# Nextcloud's brute-force throttle sleeps up to 25 s (IThrottler::MAX_DELAY) before Talk
# even looks at a bot call, and then stores the message all the same. A post that gives up
# sooner leaves a message Talk is about to store, so wait out the throttle with room to spare.
MESSAGE_TIMEOUT_S = 35.0
# An existing identical reaction is success, so a reaction that gives up early is simply
# tried again: no need to wait out the throttle.
REACTION_TIMEOUT_S = 10.0
# Nothing has been sent while connecting, so a connect that hangs is cut early and retried.
CONNECT_TIMEOUT_S = 10.0
# A 401 means the bot is not enabled in that room or the secret is wrong, and each one
# feeds the per-IP throttle that slows every bot call from this host: after one, the room
# is not called again for this long.
AUTH_REFUSAL_MEMORY_S = 600.0
# Failures before anything was sent: Talk cannot have stored the post.
_NOT_SENT: tuple[type[Exception], ...] = (
    aiohttp.ClientConnectorError,  # refused, DNS, TLS handshake, proxy
    aiohttp.ConnectionTimeoutError,  # connect or sock_connect timed out
)
_OK = frozenset({200, 201})
_AUTH_STATUS = 401
_NOT_FOUND = 404
_RATE_LIMITED = 429
_SERVER_ERROR = 500


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried; the timeouts bound one request."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    message_timeout: float = MESSAGE_TIMEOUT_S
    reaction_timeout: float = REACTION_TIMEOUT_S
    connect_timeout: float = CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        timeouts = (self.message_timeout, self.reaction_timeout, self.connect_timeout)
        if self.attempts < 1 or min(timeouts) <= 0 or min(self.base_delay, self.max_delay) < 0:
            raise ValueError("RetryPolicy needs attempts >= 1, timeouts > 0, delays >= 0")

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt-1))]."""
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return secrets.SystemRandom().uniform(0, cap)


@dataclass(frozen=True)
class _Request:
    """One logical bot API call: the same bytes on every attempt, a fresh signature each."""

    method: str
    token: str
    path: str
    value: str  # what is signed: the message or the reaction
    data: bytes
    ok: frozenset[int]
    timeout: float
    idempotent: bool  # may be repeated when it is unknown whether it arrived


@dataclass(frozen=True)
class _Failure:
    """One failed attempt and whether another attempt may help."""

    error: type[TalkError]
    status: int | None
    reason: str
    retryable: bool = True
    retry_after: float | None = None
    cause: Exception | None = None  # the transport error, when no status came back


class TalkClient:
    """Signs and sends bot API calls to one Nextcloud; the session belongs to the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        secret: str,
        *,
        max_length: int = 32000,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Clock | None = None,
    ) -> None:
        self._session = session
        self._api = base_url.rstrip("/") + API_PATH
        self._secret = secret
        self._max_length = max_length
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock or SystemClock()
        self._refused: dict[str, float] = {}  # room -> monotonic time of its last 401
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    async def send_message(
        self,
        token: str,
        message: str,
        *,
        reply_to: int | str | None = None,
        reference_id: str | None = None,
        silent: bool = False,
    ) -> list[str]:
        """Post ``message`` (split if too long) and return the referenceId of each part.

        TalkOutcomeUnknownError: a part may have been stored; nothing was sent again.
        """
        _check_token(token)
        parts = split_message(message, self._max_length)
        if not parts:
            raise TalkRejectedError("message is empty")
        reply = _message_id(reply_to) if reply_to is not None else None
        base = reference_id or secrets.token_hex(20)
        refs = [_part_reference(base, index) for index in range(len(parts))]
        for index, (part, ref) in enumerate(zip(parts, refs, strict=True)):
            body: dict[str, object] = {"message": part, "referenceId": ref}
            if reply is not None and index == 0:
                body["replyTo"] = reply
            if silent:
                body["silent"] = True
            await self._call(
                _Request(
                    "POST",
                    token,
                    f"{token}/message",
                    value=part,
                    data=json.dumps(body).encode(),
                    ok=_OK,
                    timeout=self._retry.message_timeout,
                    idempotent=False,
                )
            )
        return refs

    async def react(self, token: str, message_id: int | str, reaction: str) -> None:
        """Add ``reaction`` to a message; an existing identical reaction is success."""
        await self._reaction("POST", token, message_id, reaction, _OK)

    async def unreact(self, token: str, message_id: int | str, reaction: str) -> None:
        """Remove the bot's ``reaction``; a reaction that is already gone is success."""
        await self._reaction("DELETE", token, message_id, reaction, _OK | {_NOT_FOUND})

    async def _reaction(
        self, method: str, token: str, message_id: int | str, reaction: str, ok: frozenset[int]
    ) -> None:
        _check_token(token)
        if not reaction.strip():
            raise TalkRejectedError("reaction is empty")
        path = f"{token}/reaction/{_message_id(message_id)}"
        await self._call(
            _Request(
                method,
                token,
                path,
                value=reaction,
                data=json.dumps({"reaction": reaction}).encode(),
                ok=ok,
                timeout=self._retry.reaction_timeout,
                idempotent=True,
            )
        )

    async def _call(self, request: _Request) -> None:
        """One logical call, retried by the policy while a retry cannot duplicate it."""
        self._check_not_refused(request.token)
        failure = _Failure(TalkUnavailableError, None, "no attempt made")
        attempt = 0
        while attempt < self._retry.attempts:
            attempt += 1
            failure_or_ok = await self._attempt(request)
            if failure_or_ok is None:
                self._refused.pop(request.token, None)
                return
            failure = failure_or_ok
            delay = self._delay(failure, attempt)
            if delay is None:
                break
            log.warning(
                "talk.retry",
                room=request.token,
                status=failure.status,
                reason=failure.reason,
                attempt=attempt,
                delay=round(delay, 3),
            )
            await self._sleep(delay)
        if failure.status == _AUTH_STATUS:
            self._refused[request.token] = self._clock.monotonic()
        raise self._give_up(request.token, failure, attempt) from failure.cause

    async def _attempt(self, request: _Request) -> _Failure | None:
        """Send once; None on success, else what went wrong."""
        headers = {
            "OCS-APIRequest": "true",
            "Accept": "application/json",
            "Content-Type": "application/json",
            **sign_bot_request(self._secret, request.value),
        }
        connect = min(self._retry.connect_timeout, request.timeout)
        timeout = aiohttp.ClientTimeout(total=request.timeout, connect=connect)
        try:
            async with self._session.request(
                request.method,
                f"{self._api}/{request.path}",
                data=request.data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,  # a signed call goes to the configured URL only
            ) as response:
                await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _lost(exc, idempotent=request.idempotent)
        if status in request.ok:
            return None
        return _classify(status, retry_after)

    def room_enabled(self, token: str) -> None:
        """A signed webhook came from ``token``: the bot is enabled there with our secret,
        so a remembered 401 from that room is out of date (an admin fixed the setup)."""
        self._refused.pop(token, None)

    def _check_not_refused(self, token: str) -> None:
        """Fail fast, without a request, while a room's 401 is remembered."""
        refused_at = self._refused.get(token)
        if refused_at is None:
            return
        left = refused_at + AUTH_REFUSAL_MEMORY_S - self._clock.monotonic()
        if left <= 0:
            del self._refused[token]
            return
        self._count_failure(f"{_AUTH_STATUS}: {TalkAuthError.__name__} (remembered)")
        log.warning("talk.call_skipped", room=token, status=_AUTH_STATUS, retry_in_s=round(left))
        raise TalkAuthError(
            f"Talk bot API: not calling room {token} for another {round(left)} s: it answered "
            "401 (the bot is not enabled in that room, or the bot secret is wrong)",
            _AUTH_STATUS,
        )

    def _delay(self, failure: _Failure, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when there is none."""
        if not failure.retryable or attempt >= self._retry.attempts:
            return None
        if failure.retry_after is None:
            return self._retry.backoff(attempt)
        if failure.retry_after > self._retry.max_delay:
            return None  # retrying earlier than Talk asked only lengthens the throttle
        return failure.retry_after

    def _give_up(self, token: str, failure: _Failure, attempts: int) -> TalkError:
        self._count_failure(f"{failure.status or failure.reason}: {failure.error.__name__}")
        log.error(
            "talk.call_failed",
            room=token,
            status=failure.status,
            reason=failure.reason,
            error=failure.error.__name__,
            attempts=attempts,
        )
        if failure.error is TalkOutcomeUnknownError:
            return failure.error(
                f"Talk bot API: no answer ({failure.reason}); Talk may have stored the "
                "message, so it was not sent again"
            )
        status = failure.status or "no answer"
        return failure.error(f"Talk bot API: {status} ({failure.reason})", failure.status)

    def _count_failure(self, error: str) -> None:
        """What /readyz and !status show: failed calls, the last one and when."""
        self.failures += 1
        self.last_error = error
        self.last_error_at = self._clock.now()


def _lost(exc: Exception, *, idempotent: bool) -> _Failure:
    """No status came back: retry only what provably never left, or cannot duplicate."""
    reason = type(exc).__name__
    if isinstance(exc, _NOT_SENT) or idempotent:
        return _Failure(TalkUnavailableError, None, reason, cause=exc)
    # A read timeout, a dropped connection or a broken answer after the request went out:
    # Talk may have stored the message, and it does not deduplicate by referenceId.
    return _Failure(TalkOutcomeUnknownError, None, reason, retryable=False, cause=exc)


def _classify(status: int, retry_after: str | None) -> _Failure:
    """401 is never retried: each one feeds Talk's per-IP brute-force throttle."""
    if status == _RATE_LIMITED:
        return _Failure(TalkRateLimitedError, status, "rate limited", True, _seconds(retry_after))
    if status >= _SERVER_ERROR:
        return _Failure(TalkUnavailableError, status, "server error")
    if status == _AUTH_STATUS:
        reason = "bot not enabled in the room, or wrong secret"
        return _Failure(TalkAuthError, status, reason, retryable=False)
    return _Failure(TalkRejectedError, status, "rejected", retryable=False)


def _part_reference(base: str, index: int) -> str:
    suffix = f"-{index}"
    return base[: MAX_REFERENCE_ID - len(suffix)] + suffix


def _check_token(token: str) -> None:
    if not TOKEN_PATTERN.fullmatch(token):
        raise TalkRejectedError("not a Talk room token")


def _message_id(value: int | str) -> int:
    text = str(value)
    if not MESSAGE_ID_PATTERN.fullmatch(text):
        raise TalkRejectedError("not a Talk message id")
    return int(text)


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds; an HTTP date or junk counts as absent."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0)
