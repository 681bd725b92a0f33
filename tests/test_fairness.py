"""Who may fill a room's queue (H02, #14.2): what the bot ignores never takes a place,
answers and commands are never dropped for others' traffic, and a flooding person slows
only themselves. Through the real app, with the fake Talk and the scripted model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import i18n, replies
from bot.clock import ManualClock
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.handlers.test_confirm import Run, ask_for_write, danger_tool, said
from tests.harness import GROUP, Daemon, create_event, running_daemon
from tests.test_backpressure import inbox_rows

pytestmark = pytest.mark.timing  # races a wall-clock deadline: run alone (scripts/check)

SLOW_TURN_S = 2.0  # long enough for every webhook below to arrive while it runs
ROOM_CAP = 20


async def wait_until_asked(daemon: Daemon, requests: int) -> None:
    """The model has the slow turn's request: from here on the room's turn is busy."""
    await daemon.llm.wait_for_requests(requests)


def answers_to(talk: FakeTalk, message_id: int) -> list[str]:
    return [m.message for m in talk.messages if m.reply_to == message_id]


def asked(llm: FakeLLM) -> list[str]:
    """The last thing each model request was asked."""
    return [str(r.messages[-1].get("content") or "") for r in llm.requests]


async def test_h02_ignored_messages_during_a_slow_turn_crowd_out_no_question_or_yes(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    runs: list[Run] = []
    async with running_daemon(
        tmp_path, talk, llm, clock=ManualClock(), extra_tools=[danger_tool(runs)]
    ) as daemon:
        # alice's request waits for her yes.
        await ask_for_write(daemon, message_id=500)
        # dave's turn is slow; the room's queue has time to fill behind it.
        llm.hang(SLOW_TURN_S)  # then answers with the fake's default text
        llm.reply("bob's answer")
        llm.reply("Written.")
        assert await daemon.post(said("talkbot, think slowly", 501, sender="dave")) == 200
        await wait_until_asked(daemon, 2)
        for n in range(25):  # not addressed to the bot
            await daemon.post(said(f"chatter {n}", 600 + n, sender="carol"))
        for n in range(10):  # a guest with role none: ignored whatever it says
            guest = create_event(f"talkbot guest {n}", sender="guests/g1", message_id=700 + n)
            await daemon.post(guest)
        assert await daemon.post(said("talkbot, what is the plan?", 800, sender="bob")) == 200
        assert await daemon.post(said("yes", 801)) == 200
        assert len(llm.requests) == 2, "all this arrived while dave's turn was running"
        await daemon.idle()
        rows = await inbox_rows(daemon, GROUP)
        history = await daemon.runtime.running.store.recent_history(GROUP, 1000)

    assert answers_to(talk, 800) == ["bob's answer"]
    assert answers_to(talk, 801) == ["Written."]
    assert runs == [Run("notes.txt", "hello", "users/alice", "user")]
    assert replies.busy() not in talk.texts(GROUP)
    answered = [m.reply_to for m in talk.messages]
    assert answered.index(501) < answered.index(800), "bob is answered after dave's turn"
    assert rows == {"done": 1 + 1 + 25 + 10 + 2}
    # The ignored ones reached no model, and carol's still are the room's context.
    assert len(llm.requests) == 4
    assert not [a for a in asked(llm) if "chatter" in a or "guest" in a]
    assert sum(e.content.startswith("chatter") for e in history) == 25


async def test_h02_a_flooding_person_slows_only_themselves(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        llm.hang(SLOW_TURN_S)  # mallory's first question is slow, the rest echoed
        llm.echo = True
        mallory = [1000 + n for n in range(30)]
        assert await daemon.post(said("talkbot question 0", mallory[0], sender="mallory")) == 200
        await wait_until_asked(daemon, 1)
        for n, message_id in enumerate(mallory[1:], start=1):
            await daemon.post(said(f"talkbot question {n}", message_id, sender="mallory"))
        assert await daemon.post(said("talkbot, bob asks once", 2000, sender="bob")) == 200
        assert len(llm.requests) == 1, "everything arrived while mallory's turn was running"
        await daemon.idle()

    answered = [m.reply_to for m in talk.messages if m.message != replies.busy()]
    assert 2000 in answered, "bob's question was dropped"
    assert answers_to(talk, 2000) != [replies.busy()]
    busy = [m.reply_to for m in talk.messages if m.message == replies.busy()]
    assert len(busy) == 1
    assert busy[0] in mallory
    # Served in turn: bob waits for at most one more of mallory's questions.
    assert answered.index(2000) <= 2, answered


async def test_h02_a_queued_yes_is_routed_by_the_room_as_it_is_at_its_turn(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """Triaged as an answer when it came; by its turn alice's own new question (queued
    before it) has cancelled the action: the yes runs nothing and is an ordinary message."""
    runs: list[Run] = []
    async with running_daemon(
        tmp_path, talk, llm, clock=ManualClock(), extra_tools=[danger_tool(runs)]
    ) as daemon:
        await ask_for_write(daemon, message_id=500)
        llm.hang(SLOW_TURN_S)
        llm.reply("Something else, then.")
        assert await daemon.post(said("talkbot, think slowly", 501, sender="dave")) == 200
        await wait_until_asked(daemon, 2)
        assert await daemon.post(said("talkbot, never mind, something else", 502)) == 200
        assert await daemon.post(said("yes", 503)) == 200
        await daemon.idle()
        history = await daemon.runtime.running.store.recent_history(GROUP, 1000)
        waiting = await daemon.runtime.running.store.list_open_pending()

    assert runs == []
    assert waiting == []
    assert answers_to(talk, 503) == []
    assert len(llm.requests) == 3
    assert [e.content for e in history if e.message_id == "503"] == ["yes"]


async def test_h02_a_message_after_mode_all_is_judged_under_the_new_mode(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """While bob's turn runs, carol (a moderator) says `!mode all` and then asks without
    naming the bot: `!mode` acts at once, so her question is a turn (review of #14)."""
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        llm.hang(SLOW_TURN_S)
        llm.reply("four")
        assert await daemon.post(said("talkbot, think slowly", 900, sender="bob")) == 200
        await wait_until_asked(daemon, 1)
        mode = create_event("!mode all", sender="carol", participant_type="1", message_id=901)
        assert await daemon.post(mode) == 200
        assert await daemon.post(said("what is 2+2?", 902, sender="carol")) == 200
        await daemon.idle()
    assert answers_to(talk, 902) == ["four"]


async def test_n06_the_busy_notice_speaks_the_chat_language(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """The notices the dispatcher sends on its own (busy, apology) are in the person's
    language like every other text: here [chat] language, as Nextcloud says nothing."""
    with i18n.language("de"):
        german = replies.busy()
    assert german != replies.busy()
    extra = {"chat": {"language": "de"}}
    async with running_daemon(tmp_path, talk, llm, extra, clock=ManualClock()) as daemon:
        llm.hang(SLOW_TURN_S)
        llm.echo = True
        mallory = [1000 + n for n in range(30)]
        assert await daemon.post(said("talkbot question 0", mallory[0], sender="mallory")) == 200
        await wait_until_asked(daemon, 1)
        for n, message_id in enumerate(mallory[1:], start=1):
            await daemon.post(said(f"talkbot question {n}", message_id, sender="mallory"))
        await daemon.idle()
    texts = [m.message for m in talk.messages]
    assert german in texts
    assert replies.busy() not in texts
