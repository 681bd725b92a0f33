"""``talkbot check``: the config, serve's preflight, and what it can reach, as a report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from typing import TextIO

import aiohttp
import structlog

from bot import USER_AGENT
from bot.agent.llm import endpoint_url
from bot.commands.invocation import config_path
from bot.commands.serve import preflight
from bot.config import LLMSettings, load_settings, strip_credentials
from bot.errors import ConfigError
from bot.logs import Redactor
from bot.preflight import describe_account, describe_mcp_servers, describe_store

PROBE_TIMEOUT_S = 5.0


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up per call: tests and callers may replace it
    path = config_path(args)
    try:
        settings = load_settings(path)
        with _own_logs_to_stderr():
            warnings = asyncio.run(preflight(settings, os.environ))  # exactly what serve runs
    except ConfigError as exc:
        sys.stderr.write(f"{path}: {len(exc.problems)} problem(s)\n")
        for field, reason in exc.problems:
            sys.stderr.write(f"  {field}: {reason}\n")
        return 1
    out.write(f"{path}: OK\n")
    out.write(f"  webhook: {settings.server.webhook_url()}\n")
    out.write(f"  nextcloud: {strip_credentials(settings.nextcloud.url)} (bot secret set)\n")
    llm = settings.llm
    out.write(f"  model: {llm.model} at {strip_credentials(llm.base_url)} ({llm.flavor})\n")
    out.write(f"  admins: {', '.join(settings.access.admins) or '(none)'}\n")
    out.write(f"  schedules: {len(settings.schedules)}\n")
    for field, reason in warnings:
        out.write(f"  warning: {field}: {reason}\n")
    if not args.offline:
        out.write(f"  model endpoint: {asyncio.run(probe_models(llm))}\n")
        out.write(f"  store: {describe_store(settings.storage)}\n")
        if settings.nextcloud.user:
            account = asyncio.run(
                describe_account(settings.nextcloud, settings.access.groups.mapped())
            )
            out.write(f"  nextcloud account: {account}\n")
        with _own_logs_to_stderr(settings.secret_values()):  # a server's stderr, say
            servers = asyncio.run(describe_mcp_servers(settings))
        for server, state in servers:
            out.write(f"  mcp server {server}: {state}\n")
    return 0  # an unreachable model is reported, not fatal: it may come up later


@contextlib.contextmanager
def _own_logs_to_stderr(secrets: Sequence[str] = ()) -> Iterator[None]:
    """check's stdout is its report: what preflight logs (a module loaded) goes to stderr,
    warnings and up, without ``secrets``; the logging set before is restored after."""
    saved = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            Redactor(secrets),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


async def probe_models(llm: LLMSettings, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """GET {base_url}/models once: is the endpoint there, does it take the key, has it the model?"""
    headers = {"Accept": "application/json"}
    if key := llm.api_key.get_secret_value():
        headers["Authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(
                trust_env=False, timeout=timeout, headers={"User-Agent": USER_AGENT}
            ) as session,
            session.get(f"{endpoint_url(llm)}/models", headers=headers) as response,
        ):
            status = response.status
            body = await response.read() if status == HTTPStatus.OK else b""
    # The probe is this command's own tiny adapter: any failure is a finding, not a crash.
    except TimeoutError:
        return f"unreachable (no answer within {timeout_s:g} s)"
    except aiohttp.ClientConnectorError:
        return "unreachable (cannot connect)"
    except aiohttp.ClientError as exc:
        return f"unreachable ({type(exc).__name__})"
    if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        return f"reachable, but it refused the API key (HTTP {status})"
    if status != HTTPStatus.OK:
        return f"reachable, but GET /models answered HTTP {status}"
    return _model_listed(body, llm.model)


def _model_listed(body: bytes, model: str) -> str:
    try:
        data = json.loads(body)
        ids = {str(item["id"]) for item in data["data"]}
    except (ValueError, KeyError, TypeError):
        return "reachable (the model list was not readable)"
    if model in ids:
        return f"reachable, model {model!r} is available"
    return f"reachable, but model {model!r} is not in its list of {len(ids)}"
