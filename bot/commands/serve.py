"""``talkbot serve``: the checks before a start, then the daemon until it is told to stop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import structlog
from aiohttp import web

from bot.commands.invocation import EXIT_CONFIG, config_path, fail, load
from bot.config import Settings, load_settings
from bot.errors import ConfigError, StoreVersionError, TalkbotError
from bot.lifecycle import build_app, drain
from bot.logs import LogLimiter, LogRing, Redactor, configure_logging
from bot.preflight import log_warnings, validate_deployment
from bot.runtime import new_runtime
from bot.serving import open_gate, open_listener, raise_fd_limit, served_address
from bot.systemd import Notifier, Watchdog, watchdog_interval

log = structlog.get_logger(__name__)

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def log_level(environ: Mapping[str, str]) -> int | None:
    """``LOG_LEVEL`` (debug, info, warning, error) as a logging level; None when unset."""
    name = environ.get("LOG_LEVEL", "").strip().lower()
    if not name:
        return None
    if name not in LOG_LEVELS:
        raise ConfigError([("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")])
    return LOG_LEVELS[name]


async def preflight(settings: Settings, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every check ``serve`` makes before it binds, beyond load_settings; ``check`` runs it.

    ConfigError names every problem together; the result is the warnings.
    """
    problems: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    try:
        log_level(environ)
    except ConfigError as exc:
        problems += exc.problems
    try:
        warnings = await validate_deployment(settings)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return warnings


def run(args: argparse.Namespace) -> int:
    try:
        settings = load(args)
        level = log_level(os.environ)
    except ConfigError as exc:
        return fail(exc.one_line(), EXIT_CONFIG)
    ring, redactor = LogRing(), Redactor(debug=args.debug)
    redactor.add_secrets(settings.secret_values())
    # Logs are the daemon's output: stdout for journald; one-line failures go to stderr.
    configure_logging(
        redactor=redactor, ring=ring, debug=args.debug, stream=sys.stdout, limiter=LogLimiter()
    )
    if level is not None:  # verbosity only: message text stays redacted without --debug
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    path = config_path(args)
    try:
        return asyncio.run(_run_daemon(settings, ring, redactor, path))
    except ConfigError as exc:  # found by preflight, like a broken [tools] module
        return fail(exc.one_line(), EXIT_CONFIG)
    except StoreVersionError as exc:  # a restart cannot help: no restart loop
        return fail(str(exc), EXIT_CONFIG)
    except TalkbotError as exc:
        return fail(str(exc))


async def _run_daemon(
    settings: Settings, ring: LogRing, redactor: Redactor, config_path: Path
) -> int:
    log_warnings(await preflight(settings, os.environ))  # a broken config: before binding
    runtime = new_runtime(settings, ring=ring, redactor=redactor)
    runtime.load_settings = lambda: load_settings(config_path)
    fd_limit = raise_fd_limit()
    # systemd's socket (talkbot.socket) or [server] host/port, before any part starts
    listener = open_listener(settings.server)
    host, port = served_address(listener)
    runner = web.AppRunner(build_app(runtime), handle_signals=False, access_log=None)
    try:
        await runner.setup()
    except BaseException:
        listener.close()
        raise
    gate = open_gate(runner, listener, settings.server, fd_limit)
    where = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runtime.request_stop)
    log.info(
        "talkbot.listening",
        host=host,
        port=port,
        max_connections=gate.limit,
        fd_limit=fd_limit,
    )
    notifier = Notifier.from_environ()
    interval = watchdog_interval()
    watchdog = Watchdog(notifier, interval) if interval else None
    try:
        if watchdog is not None:
            watchdog.start()
        notifier.ready(f"listening on {where}")
        await runtime.stop_requested.wait()
        notifier.stopping("finishing the turns in progress")
        await drain(runtime)  # the gate still accepts: webhooks meanwhile wait in the store
        await gate.close()
        await runner.cleanup()
    finally:
        if watchdog is not None:
            await watchdog.stop()
        notifier.close()
    log.info("talkbot.stopped", exit_code=runtime.exit_code)
    return runtime.exit_code
