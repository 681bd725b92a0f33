"""``talkbot console``: the full pipeline in this terminal, speaking as a given user."""

from __future__ import annotations

import argparse

from bot.commands.invocation import EXIT_CONFIG, config_path, fail
from bot.console import ConsoleOptions, load_console_settings, quiet_logging, run_console
from bot.errors import ConfigError, TalkbotError
from bot.logs import LogRing, Redactor, configure_logging
from bot.runtime import new_runtime


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_console_settings(config_path(args))
    except ConfigError as exc:
        return fail(exc.one_line(), EXIT_CONFIG)
    ring, redactor = LogRing(), Redactor(debug=args.debug)
    redactor.add_secrets(settings.secret_values())
    configure_logging(redactor=redactor, ring=ring, debug=args.debug)
    quiet_logging(debug=args.debug)
    runtime = new_runtime(settings, ring=ring, redactor=redactor)
    options = ConsoleOptions(user=args.user, room=args.room, moderator=args.moderator)
    try:
        return run_console(runtime, options)
    except TalkbotError as exc:
        return fail(str(exc))
