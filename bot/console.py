"""``talkbot console``: the whole pipeline in a terminal, with the terminal in place of Talk.

Typed lines become the Create events Talk would deliver (PHP-style JSON, the same inbox,
dispatcher, routing, roles, tools, confirmations and history); what the bot would post in
Talk is written to the terminal instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import secrets
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

from bot.access import GUEST_KINDS
from bot.app import build_parts
from bot.config import TOKEN_PATTERN, Settings, load_settings, settings_from_mapping
from bot.errors import ConfigError, TalkbotError
from bot.lifecycle import close_parts, start_parts
from bot.runtime import Parts, Runtime
from bot.store import InboxItem
from bot.talk.client import TalkClient
from bot.talk.events import parse_event
from bot.talk.poster import Poster
from bot.talk.webhooks import create_event, encode_json, person

log = structlog.get_logger(__name__)

QUIT_WORDS = frozenset({"/quit", "/exit"})
HISTORY_FILE = Path("~/.talkbot_history")
HISTORY_LENGTH = 1000
# The console never calls Nextcloud; these stand in for a missing [nextcloud] table.
PLACEHOLDER_NEXTCLOUD_URL = "http://127.0.0.1"
OWNER, MODERATOR, USER = "1", "2", "3"  # talkParticipantType, a string as Talk sends it

ReadLine = Callable[[str], str]


class ConsoleError(TalkbotError):
    """The console cannot start (shown as one line)."""


@dataclass(frozen=True)
class ConsoleOptions:
    user: str  # a Nextcloud user id, or a full actor id such as "guests/abc"
    room: str | None = None  # a room token; None: a one-to-one room of this user and the bot
    moderator: bool = False
    history_file: Path | None = HISTORY_FILE


@dataclass(frozen=True)
class ConsoleRoom:
    token: str
    name: str  # a JSON list of two user ids makes it a one-to-one room, as in Talk
    participant_type: str


def actor_id(user: str) -> str:
    return user if "/" in user else f"users/{user}"


def default_room_token(actor: str) -> str:
    """A stable room per console user, so each keeps their own history."""
    return "console" + hashlib.sha256(actor.encode()).hexdigest()[:12]


class TerminalPoster:
    """The local transport: what the bot would post in Talk goes to the terminal."""

    def __init__(self, out: TextIO, bot_name: str) -> None:
        self._out = out
        self._name = bot_name
        self._refs = itertools.count(1)

    async def send_message(
        self,
        token: str,
        message: str,
        *,
        reply_to: int | str | None = None,  # noqa: ARG002 - the Poster protocol
        reference_id: str | None = None,
        silent: bool = False,  # noqa: ARG002 - the Poster protocol
    ) -> list[str]:
        first, *rest = message.strip().splitlines() or [""]
        indent = " " * (len(self._name) + 2)
        lines = [f"{self._name}> {first}", *(f"{indent}{line}" if line else "" for line in rest)]
        self._write("\n".join(lines) + "\n")
        return [reference_id or f"console-{token}-{next(self._refs)}"]

    async def react(self, token: str, message_id: int | str, reaction: str) -> None:  # noqa: ARG002 - the Poster protocol
        self._write(f"  ({self._name} reacted {reaction})\n")

    async def unreact(self, token: str, message_id: int | str, reaction: str) -> None:
        """Taking a reaction back is not worth a line in a terminal."""

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class ConsoleSession:
    """Feeds typed lines through the inbox and dispatcher, exactly as the webhook does."""

    def __init__(
        self,
        parts: Parts,
        runtime: Runtime,
        *,
        actor: str,
        room: ConsoleRoom,
        answers_all: bool = False,
    ) -> None:
        self._parts = parts
        self._clock = runtime.clock
        self.actor = actor
        self.room = room
        self.answers_all = answers_all  # the room's mode: every message is a turn
        # Fresh ids per run: an id the store has seen in this room would be dropped as a repeat.
        self._ids = itertools.count(int(self._clock.now() * 1000))

    def _event(self, text: str) -> dict[str, Any]:
        """The Create webhook Talk would send for ``text``."""
        name = self.actor.split("/", 1)[-1]
        return create_event(
            text,
            actor=person(self.actor, name, self.room.participant_type),
            room=self.room.token,
            room_name=self.room.name,
            message_id=next(self._ids),
        )

    async def send(self, text: str) -> None:
        body = encode_json(self._event(text))
        event = parse_event(body)
        store, dispatcher = self._parts.store, self._parts.dispatcher
        item_id = await store.accept_event(
            room=self.room.token,
            kind=event.type,
            body=body,
            random=secrets.token_hex(32),
            dedupe_key=event.dedupe_key,
        )
        if item_id is None:
            return
        item = InboxItem(item_id, self.room.token, event.type, body, self._clock.now(), 0)
        dispatcher.submit(item)
        await dispatcher.wait_idle()


def load_console_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """The config; a missing or unreadable [nextcloud] part is filled in, never used."""
    environ = os.environ if environ is None else environ
    try:
        return load_settings(path, environ)
    except ConfigError as exc:
        if not all(_is_nextcloud(field) for field, _ in exc.problems):
            raise
    raw = tomllib.loads(path.read_text(encoding="utf-8"))  # it parsed a moment ago
    raw["nextcloud"] = {"url": PLACEHOLDER_NEXTCLOUD_URL, "bot_secret": secrets.token_hex(32)}
    kept = {k: v for k, v in environ.items() if not k.startswith("TALKBOT_NEXTCLOUD__")}
    return settings_from_mapping(raw, kept)


def _is_nextcloud(field: str) -> bool:
    return field == "nextcloud" or field.startswith("nextcloud.")


def quiet_logging(*, debug: bool) -> None:
    """Warnings only (unless debug), so log lines do not bury the conversation."""
    level = logging.DEBUG if debug else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


def run_console(
    runtime: Runtime,
    options: ConsoleOptions,
    *,
    out: TextIO = sys.stdout,
    read_line: ReadLine = input,
) -> int:
    """The REPL; returns the exit code (a bot_restart ends the session with its code)."""
    with asyncio.Runner() as runner:
        parts = runner.run(_open(runtime, out))
        try:
            session = runner.run(_session(parts, runtime, options))
            _greet(out, runtime, parts, session)
            with _line_history(options.history_file):
                return _repl(runner, session, runtime, out, read_line)
        finally:
            runner.run(close_parts(parts))


async def _open(runtime: Runtime, out: TextIO) -> Parts:
    bot_name = runtime.settings.chat.bot_name

    def terminal(_talk: TalkClient) -> Poster:
        return TerminalPoster(out, bot_name)

    if runtime.settings.storage.backend == "postgres":
        # It would join the replicas: take up rooms and answer Talk's people here.
        raise ConsoleError(
            "talkbot console needs a store of its own, and this config's [storage] url is"
            " the PostgreSQL store the replicas share: use a copy of the config with"
            " [storage] path instead of url"
        )
    parts = await build_parts(runtime, poster_factory=terminal)
    backlog = await parts.store.inbox_backlog()
    if backlog:
        await close_parts(parts)
        raise ConsoleError(
            f"the store holds {backlog} unhandled event(s) from Talk; "
            "start the daemon once to answer them in Talk, then use the console"
        )
    # No schedules: their posts belong in Talk rooms, not in this terminal.
    await start_parts(runtime, parts, schedules=False)
    return parts


async def _session(parts: Parts, runtime: Runtime, options: ConsoleOptions) -> ConsoleSession:
    actor = actor_id(options.user)
    if options.room is None:
        # The person's own room with the bot, like a note-to-self room whose owner said
        # `!mode all` (Talk has no one-to-one room with a bot): every line is a turn.
        uid = actor.split("/", 1)[-1]
        name = json.dumps(sorted([uid, runtime.settings.chat.bot_name]))
        room = ConsoleRoom(default_room_token(actor), name, OWNER)
        known = await parts.store.get_room(room.token)
        mode = known.mode if known and known.mode else "all"
        if known is None or known.mode is None:
            await parts.store.set_room_mode(room.token, mode)
        return ConsoleSession(parts, runtime, actor=actor, room=room, answers_all=mode == "all")
    if not TOKEN_PATTERN.fullmatch(options.room):
        raise ConsoleError(f"--room {options.room!r} is not a Talk room token ([a-z0-9]{{4,30}})")
    known = await parts.store.get_room(options.room)
    kind = MODERATOR if options.moderator else USER
    room = ConsoleRoom(options.room, known.name if known else options.room, kind)
    mode = (known.mode if known else None) or runtime.settings.chat.respond_in_groups
    return ConsoleSession(parts, runtime, actor=actor, room=room, answers_all=mode == "all")


def _greet(out: TextIO, runtime: Runtime, parts: Parts, session: ConsoleSession) -> None:
    role = parts.access.role_of(session.actor)
    where = "every message is a turn" if session.answers_all else "name the bot (!mode all)"
    out.write(
        f"talkbot console: you are {session.actor} (role {role}) in room {session.room.token} "
        f"({where}).\nStore: {runtime.settings.storage.location}. Replies appear here instead of "
        "in Talk. /quit or Ctrl-D leaves.\n"
    )
    if role == "none":
        out.write(f"Note: {_no_role_hint(session.actor)}\n")
    out.flush()


def _no_role_hint(actor: str) -> str:
    """Why this actor gets no answer, naming the key that would change it."""
    if actor.partition("/")[0] in GUEST_KINDS:
        return (
            'guests have no role, so the bot will not answer ([access] guest_role = "guest" '
            "lets guests chat, without tools)."
        )
    return "this user has no role, so the bot will not answer ([access] users)."


def _repl(
    runner: asyncio.Runner,
    session: ConsoleSession,
    runtime: Runtime,
    out: TextIO,
    read_line: ReadLine,
) -> int:
    prompt = f"{session.actor.split('/', 1)[-1]}> "
    while not runtime.stop_requested.is_set():
        try:
            line = read_line(prompt)
        except EOFError:
            out.write("\n")
            return 0
        text = line.strip()
        if text in QUIT_WORDS:
            return 0
        if text:
            runner.run(session.send(line))
    out.write("The bot stopped itself (bot_restart or !restart); leaving the console.\n")
    return runtime.exit_code


@contextlib.contextmanager
def _line_history(path: Path | None) -> Iterator[None]:
    """Readline editing and a history file, when the console runs on a terminal."""
    if path is None or not sys.stdin.isatty():
        yield
        return
    try:
        import readline  # noqa: PLC0415 - only on a terminal, and not on every platform
    except ImportError:
        yield
        return
    history = path.expanduser()
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(HISTORY_LENGTH)
    try:
        yield
    finally:
        try:
            readline.write_history_file(history)
        except OSError as exc:
            log.warning("console.history_not_saved", error=exc.strerror)
