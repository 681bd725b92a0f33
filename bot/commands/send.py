"""``talkbot send``: one message as the bot, and in a person's words why it did not go."""

from __future__ import annotations

import argparse
import asyncio

import aiohttp

from bot import USER_AGENT
from bot.commands.invocation import EXIT_CONFIG, EXIT_USAGE, fail, load
from bot.config import Settings, strip_credentials
from bot.errors import (
    ConfigError,
    TalkAuthError,
    TalkError,
    TalkOutcomeUnknownError,
    TalkRateLimitedError,
    TalkUnavailableError,
)
from bot.talk.client import RetryPolicy, TalkClient


def run(args: argparse.Namespace) -> int:
    try:
        settings = load(args)
    except ConfigError as exc:
        return fail(exc.one_line(), EXIT_CONFIG)
    retry = RetryPolicy()
    try:
        asyncio.run(_send_once(settings, args.room, args.message, retry))
    except TalkError as exc:
        if exc.status is None and not isinstance(exc, TalkUnavailableError):
            return fail(f"not sent: {exc}", EXIT_USAGE)  # refused before any request
        where = f"Nextcloud at {strip_credentials(settings.nextcloud.url)}"
        return fail(send_failure(exc, where, args.room, retry))
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE)
    return 0


async def _send_once(settings: Settings, room: str, message: str, retry: RetryPolicy) -> None:
    async with aiohttp.ClientSession(
        trust_env=False, headers={"User-Agent": USER_AGENT}
    ) as session:
        secret = settings.nextcloud.bot_secret.get_secret_value()
        client = TalkClient(session, settings.nextcloud.url, secret, retry=retry)
        await client.send_message(room, message)


# Why no answer came, by the aiohttp error the Talk client names, in a person's words.
UNREACHABLE_REASONS = {
    "ClientConnectorDNSError": "the host name does not resolve (DNS)",
    "ClientConnectorCertificateError": "its TLS certificate is not valid for this name",
    "ClientConnectorSSLError": "the TLS handshake failed",
    "ClientConnectorError": "the connection was refused or the host is unreachable",
    "ConnectionTimeoutError": "the connection timed out (a firewall dropping packets?)",
}


def send_failure(exc: TalkError, where: str, room: str, retry: RetryPolicy) -> str:
    """What ``talkbot send`` says when Talk did not take the message, and what to do."""
    if isinstance(exc, TalkOutcomeUnknownError):  # before TalkUnavailableError: a subclass
        return (
            f"no answer from {where} within {retry.message_timeout:g} s: the message may "
            "still have been posted; check the room before sending again"
        )
    if isinstance(exc, TalkUnavailableError):
        if exc.status is not None:
            return f"{where} failed with HTTP {exc.status} on every try; try again later"
        text = str(exc)
        reason = next((r for name, r in UNREACHABLE_REASONS.items() if f"({name})" in text), text)
        return f"cannot reach {where}: {reason}"
    if isinstance(exc, TalkAuthError):
        return (
            f"{where} answered 401 for room {room}: the bot is not enabled in that room "
            f"(`occ talk:bot:setup BOT_ID {room}`), or its secret differs from the one "
            "given to `occ talk:bot:install`"
        )
    if isinstance(exc, TalkRateLimitedError):
        return (
            f"{where} answered 429: its brute-force protection is throttling this host, "
            "usually after 401s; fix their cause, then run "
            "`occ security:bruteforce:reset IP_OF_THIS_HOST` on the Nextcloud server"
        )
    return f"{where} refused the message with HTTP {exc.status}"
