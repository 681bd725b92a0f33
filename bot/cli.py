"""The ``talkbot`` command line: its parser and exit codes; the commands are bot/commands/."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bot import __version__
from bot.commands import check, console, nextcloud_setup, send, serve
from bot.commands.invocation import EXIT_CONFIG, EXIT_USAGE

__all__ = ["EXIT_CONFIG", "EXIT_USAGE", "command_parser", "main"]

EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell shows for a tool its reader left


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

    def command(
        name: str, help_text: str, run: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            type=Path,
            help="config file (default: $TALKBOT_CONFIG, then ./talkbot.toml)",
        )
        sub.set_defaults(run=run)
        return sub

    serving = command("serve", "run the daemon", serve.run)
    serving.add_argument("--debug", action="store_true", help="log message text and tool arguments")
    checking = command("check", "validate the config and name every bad field", check.run)
    checking.add_argument(
        "--offline", action="store_true", help="do not try to reach the model endpoint"
    )
    chatting = command("console", "chat with the full pipeline in this terminal", console.run)
    chatting.add_argument("--user", required=True, help="speak as this Nextcloud user id")
    chatting.add_argument("--room", help="room token (default: a one-to-one room with the bot)")
    chatting.add_argument("--moderator", action="store_true", help="as a moderator of --room")
    chatting.add_argument("--debug", action="store_true", help="show debug logs")
    setup = command(
        "nextcloud-setup", "print the occ commands that register this bot", nextcloud_setup.run
    )
    setup.add_argument("--occ", default="sudo -u www-data php occ", help="how to call occ")
    sending = command("send", "post one message as the bot", send.run)
    sending.add_argument("--room", required=True, help="room token")
    sending.add_argument("message", help="the message text")
    return parser
