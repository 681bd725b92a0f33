"""``talkbot console``: the real pipeline in a terminal, driven through a pty."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.app import build_parts
from bot.clock import ManualClock
from bot.config import settings_from_mapping
from bot.console import (
    ConsoleRoom,
    ConsoleSession,
    TerminalPoster,
    actor_id,
    default_room_token,
    load_console_settings,
)
from bot.errors import ConfigError
from bot.lifecycle import close_parts, start_parts
from bot.runtime import new_runtime
from bot.store import Store
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import base_config
from tests.test_ops_e2e import write_config

EXPECT_TIMEOUT_S = 30.0


class PtyConsole:
    """``talkbot console`` on a pseudo-terminal: what a person at a terminal sees and types."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self.output = ""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def expect(self, text: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXPECT_TIMEOUT_S
        while text not in self.output:
            remaining = deadline - loop.time()
            assert remaining > 0, f"{text!r} never appeared in:\n{self.output}"
            chunk = await asyncio.to_thread(self._read, min(remaining, 0.5))
            self.output += chunk

    def _read(self, wait_s: float) -> str:
        ready, _, _ = select.select([self.master], [], [], wait_s)
        if not ready:
            return ""
        try:
            return os.read(self.master, 65536).decode(errors="replace")
        except OSError:  # EIO: the console exited and closed the terminal
            return ""

    async def exit_code(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), EXPECT_TIMEOUT_S)
        self.output += await asyncio.to_thread(self._read, 0.1)
        return code


@asynccontextmanager
async def console(config: Path, home: Path, *args: str) -> AsyncIterator[PtyConsole]:
    master, slave = os.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        "--config",
        str(config),
        *args,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "HOME": str(home), "TERM": "dumb", "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    os.close(slave)
    try:
        yield PtyConsole(proc, master)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


def config_without_nextcloud(tmp_path: Path, talk: FakeTalk, llm: FakeLLM) -> dict[str, Any]:
    data = base_config(tmp_path, talk, llm)
    del data["nextcloud"]  # the console never calls Talk: trying a model needs no Nextcloud
    return data


async def test_console_answers_a_turn_through_a_pty(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = write_config(tmp_path, config_without_nextcloud(tmp_path, talk, llm))
    llm.reply("Hello from the scripted model")
    async with console(config, tmp_path, "--user", "alice") as term:
        await term.expect("you are users/alice (role user)")
        await term.expect("alice> ")
        term.type("hi there\n")
        await term.expect("talkbot> Hello from the scripted model")
        term.type("/quit\n")
        assert await term.exit_code() == 0
    assert llm.requests[-1].messages[-1]["content"].endswith("hi there")
    assert talk.messages == []  # nothing went to Talk
    assert "hi there" in (tmp_path / ".talkbot_history").read_text()  # readline history
    store = Store.open(tmp_path / "talkbot.sqlite3", ManualClock())
    try:
        room = await store.get_room(default_room_token("users/alice"))
    finally:
        await store.close()
    assert room is not None
    assert room.one_to_one  # the same store the daemon uses, and a one-to-one room


async def test_console_runs_confirmations_and_ends_on_a_confirmed_restart(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = write_config(tmp_path, base_config(tmp_path, talk, llm))
    llm.call("bot_restart", {})
    llm.reply("Restarting now.")
    async with console(config, tmp_path, "--user", "root") as term:
        await term.expect("(role admin)")
        await term.expect("root> ")
        term.type("please restart yourself\n")
        await term.expect("Confirm before I run `bot_restart`")
        assert len(llm.requests) == 1  # asked, not run
        term.type("yes\n")
        await term.expect("talkbot> Restarting now.")
        assert await term.exit_code() == 75  # EXIT_RESTART, as under systemd


async def test_console_names_guest_role_for_a_guest_without_a_role(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = write_config(tmp_path, base_config(tmp_path, talk, llm))
    async with console(config, tmp_path, "--user", "guests/abc") as term:
        await term.expect("(role none)")
        await term.expect("abc> ")
        term.type("/quit\n")
        assert await term.exit_code() == 0
    assert 'guest_role = "guest"' in term.output
    assert "[access] users" not in term.output


async def test_console_leaves_on_end_of_input(tmp_path: Path, talk: FakeTalk, llm: FakeLLM) -> None:
    config = write_config(tmp_path, base_config(tmp_path, talk, llm))
    async with console(config, tmp_path, "--user", "alice") as term:
        await term.expect("alice> ")
        term.type("\x04")  # Ctrl-D
        assert await term.exit_code() == 0
    assert llm.requests == []


async def test_console_refuses_a_store_with_unanswered_talk_events(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = write_config(tmp_path, base_config(tmp_path, talk, llm))
    store = Store.open(tmp_path / "talkbot.sqlite3", ManualClock())
    body = json.dumps({"type": "Create"}).encode()
    await store.accept_event(
        room="grouproom1", kind="Create", body=body, random="r" * 64, dedupe_key="grouproom1/1"
    )
    await store.close()
    async with console(config, tmp_path, "--user", "alice") as term:
        assert await term.exit_code() == 1
    assert "talkbot: the store holds 1 unhandled event(s) from Talk" in term.output
    assert "Traceback" not in term.output
    assert llm.requests == []


async def test_p07_console_refuses_the_shared_postgresql_store(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    data = base_config(tmp_path, talk, llm)
    data["storage"] = {"url": postgres_url}
    config = write_config(tmp_path, data)
    async with console(config, tmp_path, "--user", "alice") as term:
        assert await term.exit_code() == 1
    assert "needs a store of its own" in term.output
    assert "Traceback" not in term.output
    with psycopg.connect(postgres_url) as conn:  # it did not even open it
        assert conn.execute("SELECT to_regclass('inbox')").fetchone() == (None,)


# -- the session in process ----------------------------------------------------------


@asynccontextmanager
async def session_in(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, room: ConsoleRoom, user: str = "alice"
) -> AsyncIterator[tuple[ConsoleSession, io.StringIO]]:
    settings = settings_from_mapping(base_config(tmp_path, talk, llm), {})
    runtime = new_runtime(settings, clock=ManualClock())
    out = io.StringIO()
    parts = await build_parts(runtime, poster_factory=lambda _talk: TerminalPoster(out, "talkbot"))
    await start_parts(runtime, parts, schedules=False)
    try:
        yield ConsoleSession(parts, runtime, actor=actor_id(user), room=room), out
    finally:
        await close_parts(parts)


async def test_console_follows_group_room_routing(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    room = ConsoleRoom("grouproom1", "Project room", "3")
    async with session_in(tmp_path, talk, llm, room) as (session, out):
        await session.send("lunch at noon, everyone?")
        assert llm.requests == []  # a group room: not addressed to the bot
        llm.reply("Noon works.")
        await session.send("@talkbot does noon work?")
    assert out.getvalue() == "talkbot> Noon works.\n"
    assert talk.messages == []


async def test_console_as_a_user_without_a_role_gets_no_answer(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    guest_room = ConsoleRoom("dmroom01", json.dumps(["mallory", "talkbot"]), "1")
    async with session_in(tmp_path, talk, llm, guest_room, user="guests/mallory") as (
        session,
        out,
    ):
        await session.send("tell me a secret")
    assert llm.requests == []  # guest_role is "none": the same roles as in Talk
    assert out.getvalue() == ""


def test_console_settings_fill_in_a_missing_nextcloud_table(tmp_path: Path) -> None:
    config = tmp_path / "talkbot.toml"
    config.write_text('[llm]\nmodel = "tiny"\n')
    settings = load_console_settings(config, {"TALKBOT_NEXTCLOUD__BOT_SECRET": "short"})
    assert settings.llm.model == "tiny"
    assert len(settings.nextcloud.bot_secret.get_secret_value()) == 64


def test_console_settings_still_name_other_bad_fields(tmp_path: Path) -> None:
    config = tmp_path / "talkbot.toml"
    config.write_text("[llm]\nmax_rounds = 0\n")
    with pytest.raises(ConfigError, match=r"llm\.max_rounds"):
        load_console_settings(config, {})
