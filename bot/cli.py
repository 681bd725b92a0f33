"""The ``talkbot`` command line: serve, check, console, nextcloud-setup, send."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import aiohttp
import structlog
from aiohttp import web

from bot import __version__
from bot.app import build_app, new_runtime
from bot.config import Settings, default_config_path, load_settings
from bot.errors import ConfigError, TalkbotError, TalkError
from bot.logs import LogRing, Redactor, configure_logging
from bot.talk.client import TalkClient

log = structlog.get_logger(__name__)

EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG: systemd does not restart-loop on a broken config
TALK_FEATURES = ("webhook", "response", "reaction")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
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
    command("check", "validate the config and name every bad field", _check)
    setup = command("nextcloud-setup", "print the occ commands that register this bot", _setup)
    setup.add_argument("--occ", default="sudo -u www-data php occ", help="how to call occ")
    send = command("send", "post one message as the bot", _send)
    send.add_argument("--room", required=True, help="room token")
    send.add_argument("message", help="the message text")
    return parser


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
    except ConfigError as exc:
        return _fail(exc.one_line(), EXIT_CONFIG)
    ring, redactor = LogRing(), Redactor(debug=args.debug)
    redactor.add_secrets(
        [settings.nextcloud.bot_secret.get_secret_value(), settings.llm.api_key.get_secret_value()]
    )
    configure_logging(redactor=redactor, ring=ring, debug=args.debug)
    path = _config_path(args)
    try:
        return asyncio.run(_run_daemon(settings, ring, redactor, path))
    except TalkbotError as exc:
        return _fail(str(exc))


async def _run_daemon(
    settings: Settings, ring: LogRing, redactor: Redactor, config_path: Path
) -> int:
    runtime = new_runtime(settings, ring=ring, redactor=redactor)
    runtime.load_settings = lambda: load_settings(config_path)
    app = build_app(runtime)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        where = f"{settings.server.host}:{settings.server.port}"
        raise TalkbotError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runtime.request_stop)
    log.info("talkbot.listening", host=settings.server.host, port=settings.server.port)
    await runtime.stop_requested.wait()
    await runner.cleanup()
    log.info("talkbot.stopped", exit_code=runtime.exit_code)
    return runtime.exit_code


# -- check ---------------------------------------------------------------------------


def _check(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    path = _config_path(args)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        sys.stderr.write(f"{path}: {len(exc.problems)} problem(s)\n")
        for field, reason in exc.problems:
            sys.stderr.write(f"  {field}: {reason}\n")
        return 1
    out.write(f"{path}: OK\n")
    out.write(f"  webhook: {settings.server.webhook_url()}\n")
    out.write(f"  nextcloud: {settings.nextcloud.url} (bot secret set)\n")
    out.write(f"  model: {settings.llm.model} at {settings.llm.base_url} ({settings.llm.flavor})\n")
    out.write(f"  admins: {', '.join(settings.access.admins) or '(none)'}\n")
    out.write(f"  schedules: {len(settings.schedules)}\n")
    return 0


# -- nextcloud-setup -----------------------------------------------------------------


def _setup(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    path = _config_path(args)
    generated = None
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if [field for field, _ in exc.problems] != ["nextcloud.bot_secret"]:
            return _fail(exc.one_line(), 1)
        generated = secrets.token_urlsafe(48)
        settings = load_settings(path, {**os.environ, "TALKBOT_NEXTCLOUD__BOT_SECRET": generated})
    secret = settings.nextcloud.bot_secret.get_secret_value()
    occ = args.occ
    features = " ".join(f"-f {feature}" for feature in TALK_FEATURES)
    name = settings.chat.bot_name
    url = settings.server.webhook_url()
    if generated:
        out.write("# No bot_secret is configured; here is a fresh one. Put it in the config\n")
        out.write(f"# ([nextcloud] bot_secret, or bot_secret_file):\n#   {generated}\n\n")
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


# -- send ----------------------------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        return _fail(exc.one_line(), EXIT_CONFIG)
    try:
        asyncio.run(_send_once(settings, args.room, args.message))
    except TalkError as exc:
        return _fail(f"Talk refused the message: {exc}")
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    return 0


async def _send_once(settings: Settings, room: str, message: str) -> None:
    async with aiohttp.ClientSession(trust_env=False) as session:
        client = TalkClient(
            session, settings.nextcloud.url, settings.nextcloud.bot_secret.get_secret_value()
        )
        await client.send_message(room, message)
