"""R14: a confirmed restart stops once with 75, a supervisor starts it once, nothing repeats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import ADMIN_ROOM, API_KEY, GROUP, create_event, php_json
from tests.test_process import make_config, serve, spawn, wait_healthy

EXIT_RESTART = 75


def admin_says(text: str, message_id: int) -> bytes:
    return php_json(
        create_event(
            text, sender="root", room=ADMIN_ROOM, room_name="Admins", message_id=message_id
        )
    )


async def test_r14_confirmed_restart_exits_75_once_and_the_next_process_stays_up(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = make_config(tmp_path, talk, llm)
    first = await spawn(config)
    await wait_healthy(first.url, first.proc)
    assert await first.post(admin_says("!restart", 10)) == 200
    await talk.wait_for_messages(1)
    assert "bot_restart" in talk.texts(ADMIN_ROOM)[0]
    assert await first.post(admin_says("yes", 11)) == 200
    code = await asyncio.wait_for(first.proc.wait(), timeout=20)
    assert code == EXIT_RESTART
    assert any("Done: bot_restart" in text for text in talk.texts(ADMIN_ROOM))

    # What systemd's Restart=on-failure does: start it again, once.
    second = await spawn(config)
    try:
        await wait_healthy(second.url, second.proc)
        # The "yes" was finished before the exit: nothing is re-run, the process stays up.
        await asyncio.sleep(1.0)
        assert second.proc.returncode is None
        assert await second.post(admin_says("yes", 12)) == 200  # a late yes confirms nothing
        await asyncio.sleep(0.5)
        assert second.proc.returncode is None
        assert sum("Done: bot_restart" in text for text in talk.texts(ADMIN_ROOM)) == 1
    finally:
        second.proc.terminate()
        assert await asyncio.wait_for(second.proc.wait(), timeout=20) == 0
    assert llm.requests == []


async def test_a_role_set_with_role_holds_after_a_restart_of_the_real_process(
    tmp_path: Path, talk: FakeTalk
) -> None:
    """#12.1: `!role carol admin`, restart, and carol is an admin, not "something went wrong".

    Each process talks to its own model fake, so what the second one was asked cannot be
    mistaken for a request the first one sent.
    """
    async with FakeLLM(api_key=API_KEY) as before:
        config = make_config(tmp_path, talk, before)
        async with serve(config) as first:
            assert await first.post(admin_says("!role carol admin", 20)) == 200
            await talk.wait_for_messages(1)
            first.proc.terminate()
            assert await asyncio.wait_for(first.proc.wait(), timeout=20) == 0
    assert "now has the role **admin**" in talk.texts(ADMIN_ROOM)[0]
    assert before.requests == []

    async with FakeLLM(api_key=API_KEY) as after:
        config = make_config(tmp_path, talk, after)
        after.reply("hello carol")
        async with serve(config) as second:
            carol = create_event("talkbot, hello", sender="carol", message_id=21)
            assert await second.post(php_json(carol)) == 200
            [request] = await after.wait_for_requests(1, timeout=15)
            await talk.wait_for_messages(2, timeout=15)
        assert "bot_logs" in request.tool_names  # an admin-only tool: carol is an admin
        assert talk.texts(GROUP) == ["hello carol"]
