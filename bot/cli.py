"""The ``talkbot`` command line: serve, check, console, nextcloud-setup, send."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web

from bot import __version__
from bot.agent.llm import endpoint_url
from bot.config import (
    LLMSettings,
    Settings,
    default_config_path,
    load_settings,
    strip_credentials,
)
from bot.console import ConsoleOptions, load_console_settings, quiet_logging, run_console
from bot.errors import (
    ConfigError,
    StoreVersionError,
    TalkAuthError,
    TalkbotError,
    TalkError,
    TalkOutcomeUnknownError,
    TalkRateLimitedError,
    TalkUnavailableError,
)
from bot.lifecycle import build_app, drain
from bot.logs import LogLimiter, LogRing, Redactor, configure_logging
from bot.preflight import (
    describe_account,
    describe_mcp_servers,
    describe_store,
    log_warnings,
    validate_deployment,
)
from bot.runtime import new_runtime
from bot.serving import open_gate, open_listener, raise_fd_limit, served_address
from bot.systemd import Notifier, Watchdog, watchdog_interval
from bot.talk.client import RetryPolicy, TalkClient

log = structlog.get_logger(__name__)

EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG: systemd does not restart-loop on a broken config
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell shows for a tool its reader left
TALK_FEATURES = ("webhook", "response", "reaction")
PROBE_TIMEOUT_S = 5.0
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a reader that left (`| head -1`) shows here, not at exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    return code


def _reader_gone() -> int:
    """stdout's reader left early: stop quietly (the Python docs' "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush goes nowhere
    return EXIT_PIPE_CLOSED


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="talkbot", description="AI assistant for Nextcloud Talk")
    parser.add_argument("--version", action="version", version=f"talkbot {__version__}")
    commands = parser.add_subparsers(dest="command")

    def command(name: str, help_text: str, run: object) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            type=Path,
            help="config file (default: $TALKBOT_CONFIG, then ./talkbot.toml)",
        )
        sub.set_defaults(run=run)
        return sub

    serve = command("serve", "run the daemon", _serve)
    serve.add_argument("--debug", action="store_true", help="log message text and tool arguments")
    check = command("check", "validate the config and name every bad field", _check)
    check.add_argument(
        "--offline", action="store_true", help="do not try to reach the model endpoint"
    )
    console = command("console", "chat with the full pipeline in this terminal", _console)
    console.add_argument("--user", required=True, help="speak as this Nextcloud user id")
    console.add_argument("--room", help="room token (default: a one-to-one room with the bot)")
    console.add_argument("--moderator", action="store_true", help="as a moderator of --room")
    console.add_argument("--debug", action="store_true", help="show debug logs")
    setup = command("nextcloud-setup", "print the occ commands that register this bot", _setup)
    setup.add_argument("--occ", default="sudo -u www-data php occ", help="how to call occ")
    send = command("send", "post one message as the bot", _send)
    send.add_argument("--room", required=True, help="room token")
    send.add_argument("message", help="the message text")
    return parser


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


def _config_path(args: argparse.Namespace) -> Path:
    return args.config or default_config_path(os.environ)


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(_config_path(args))


def _fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"talkbot: {message}\n")
    return code


# -- serve ---------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
        level = log_level(os.environ)
    except ConfigError as exc:
        return _fail(exc.one_line(), EXIT_CONFIG)
    ring, redactor = LogRing(), Redactor(debug=args.debug)
    redactor.add_secrets(settings.secret_values())
    # Logs are the daemon's output: stdout for journald; one-line failures go to stderr.
    configure_logging(
        redactor=redactor, ring=ring, debug=args.debug, stream=sys.stdout, limiter=LogLimiter()
    )
    if level is not None:  # verbosity only: message text stays redacted without --debug
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    path = _config_path(args)
    try:
        return asyncio.run(_run_daemon(settings, ring, redactor, path))
    except ConfigError as exc:  # found by preflight, like a broken [tools] module
        return _fail(exc.one_line(), EXIT_CONFIG)
    except StoreVersionError as exc:  # a restart cannot help: no restart loop
        return _fail(str(exc), EXIT_CONFIG)
    except TalkbotError as exc:
        return _fail(str(exc))


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


# -- check ---------------------------------------------------------------------------


def _check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up per call: tests and callers may replace it
    path = _config_path(args)
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
            aiohttp.ClientSession(trust_env=False, timeout=timeout) as session,
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


# -- nextcloud-setup -----------------------------------------------------------------


def _setup(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up per call: tests and callers may replace it
    path = _config_path(args)
    generated = why = None
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if [field for field, _ in exc.problems] != ["nextcloud.bot_secret"]:
            return _fail(exc.one_line(), 1)
        why = exc.problems[0][1]  # missing, too short, or the example's placeholder
        generated = secrets.token_hex(32)  # 64 characters; hex never starts with "-" (an option)
        settings = load_settings(path, {**os.environ, "TALKBOT_NEXTCLOUD__BOT_SECRET": generated})
    secret = settings.nextcloud.bot_secret.get_secret_value()
    occ = args.occ
    features = " ".join(f"-f {feature}" for feature in TALK_FEATURES)
    name = settings.chat.bot_name
    url = settings.server.webhook_url()
    if generated:
        out.write(f"# nextcloud.bot_secret: {why}.\n")
        out.write("# Here is a fresh one; put it in the config ([nextcloud] bot_secret, or\n")
        out.write(f"# bot_secret_file) before you run these commands:\n#   {generated}\n\n")
    if secret.startswith("-"):
        out.write("# Warning: occ reads an argument starting with '-' as an option; use a secret\n")
        out.write("# that starts with a letter or digit.\n\n")
    if _is_loopback(url):
        out.write(f"# Note: {url} is a loopback address: it works only when Nextcloud runs on\n")
        out.write("# this host. Otherwise set [server] public_url to the URL it can reach.\n\n")
    out.write("# 1. Register the bot (run on the Nextcloud server):\n")
    out.write(
        f"{occ} talk:bot:install {features} {shlex.quote(name)} {shlex.quote(secret)} "
        f"{shlex.quote(url)} {shlex.quote('AI assistant')}\n\n"
    )
    out.write("# 2. Find its id:\n")
    out.write(f"{occ} talk:bot:list\n\n")
    out.write("# 3. Enable it in rooms (or let moderators do it in the room's settings, Bots):\n")
    rooms = [settings.access.admin_room] if settings.access.admin_room else []
    rooms += [s.room for s in settings.schedules if s.room not in rooms]
    out.write(f"{occ} talk:bot:setup BOT_ID {' '.join(rooms) or 'ROOM_TOKEN'}\n")
    return 0


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- console -------------------------------------------------------------------------


def _console(args: argparse.Namespace) -> int:
    try:
        settings = load_console_settings(_config_path(args))
    except ConfigError as exc:
        return _fail(exc.one_line(), EXIT_CONFIG)
    ring, redactor = LogRing(), Redactor(debug=args.debug)
    redactor.add_secrets(settings.secret_values())
    configure_logging(redactor=redactor, ring=ring, debug=args.debug)
    quiet_logging(debug=args.debug)
    runtime = new_runtime(settings, ring=ring, redactor=redactor)
    options = ConsoleOptions(user=args.user, room=args.room, moderator=args.moderator)
    try:
        return run_console(runtime, options)
    except TalkbotError as exc:
        return _fail(str(exc))


# -- send ----------------------------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        return _fail(exc.one_line(), EXIT_CONFIG)
    retry = RetryPolicy()
    try:
        asyncio.run(_send_once(settings, args.room, args.message, retry))
    except TalkError as exc:
        if exc.status is None and not isinstance(exc, TalkUnavailableError):
            return _fail(f"not sent: {exc}", EXIT_USAGE)  # refused before any request
        where = f"Nextcloud at {strip_credentials(settings.nextcloud.url)}"
        return _fail(send_failure(exc, where, args.room, retry))
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    return 0


async def _send_once(settings: Settings, room: str, message: str, retry: RetryPolicy) -> None:
    async with aiohttp.ClientSession(trust_env=False) as session:
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
