"""``talkbot nextcloud-setup``: the occ commands that register this bot, from its config."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shlex
import sys
from typing import TextIO
from urllib.parse import urlsplit

from bot.commands.invocation import config_path, fail
from bot.config import load_settings
from bot.errors import ConfigError

TALK_FEATURES = ("webhook", "response", "reaction")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up per call: tests and callers may replace it
    path = config_path(args)
    generated = why = None
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if [field for field, _ in exc.problems] != ["nextcloud.bot_secret"]:
            return fail(exc.one_line(), 1)
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
