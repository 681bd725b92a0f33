"""nc_talk_send (A15): users post only into their current room; admins into any room the
bot knows, confirming it when it is not the current room; a tainted turn confirms too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from bot.clock import ManualClock
from bot.config import Role
from bot.store import Store
from bot.talk.client import RetryPolicy, TalkClient
from bot.tools import Toolbox
from bot.tools.talk import RoomDirectory, TalkSendArgs, make_talk_tools
from tests.fakes.talk_server import FakeTalk
from tests.harness import SECRET
from tests.tools import context

HERE = "hereroom1"
JOINED = "teamroom1"
CONFIGURED = "standups1"
LEFT = "oldroom01"


@pytest.fixture
async def toolbox(tmp_path: Path, talk: FakeTalk) -> AsyncIterator[Toolbox]:
    clock = ManualClock()
    store = Store.open(tmp_path / "talkbot.sqlite3", clock)
    await store.record_room(HERE, name="Here", one_to_one=False)
    await store.record_room(JOINED, name="Team", one_to_one=False, joined=True)
    await store.record_room(LEFT, name="Old", one_to_one=False, joined=False)
    rooms = RoomDirectory(store, lambda: {CONFIGURED, LEFT})
    async with aiohttp.ClientSession() as session:
        client = TalkClient(session, talk.url, SECRET, retry=RetryPolicy(attempts=1))
        yield Toolbox(make_talk_tools(client, rooms))
    await store.close()


ctx = partial(context.ctx, room=HERE)


@dataclass(frozen=True)
class Case:
    role: Role
    room: str
    confirm: bool  # a confirmation is asked before it runs
    posted_to: str | None = None  # where the message lands once it runs
    error: str | None = None  # or why it is refused
    tainted: bool = False


CASES = {
    "user_this_room": Case("user", "", confirm=False, posted_to=HERE),
    "user_this_room_by_token": Case("user", HERE, confirm=False, posted_to=HERE),
    "user_other_room": Case("user", JOINED, confirm=False, error="only use this room"),
    "user_tainted_turn": Case("user", "", confirm=True, posted_to=HERE, tainted=True),
    "admin_this_room": Case("admin", "", confirm=False, posted_to=HERE),
    "admin_joined_room": Case("admin", JOINED, confirm=True, posted_to=JOINED),
    "admin_config_room": Case("admin", CONFIGURED, confirm=True, posted_to=CONFIGURED),
    "admin_room_left": Case("admin", LEFT, confirm=True, error="unknown room"),
    "admin_unknown_room": Case("admin", "nowhere12", confirm=True, error="unknown room"),
    "admin_bad_token": Case("admin", "../etc", confirm=True, error="unknown room"),
    "guest": Case("guest", "", confirm=False, error="not allowed"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a15_who_may_send_where(toolbox: Toolbox, talk: FakeTalk, case: Case) -> None:
    args = TalkSendArgs(room=case.room, message="Deploy finished")
    context = ctx(case.role, tainted=case.tainted)
    tool = toolbox.get("nc_talk_send")
    assert tool is not None
    assert toolbox.needs_confirmation(tool, args, context) is case.confirm
    if case.confirm:  # without the human's yes it never runs
        refused = await toolbox.execute("nc_talk_send", args, context)
        assert not refused.ok
        assert talk.messages == []
    result = await toolbox.execute("nc_talk_send", args, context, confirmed=True)
    if case.error is not None:
        assert not result.ok
        assert case.error in result.text
        assert talk.messages == []
    else:
        assert result.ok
        assert [(m.token, m.message) for m in talk.messages] == [
            (case.posted_to, "Deploy finished")
        ]


async def test_a15_guests_are_not_offered_the_tool(toolbox: Toolbox) -> None:
    assert toolbox.specs_for("guest") == []
    assert [spec["function"]["name"] for spec in toolbox.specs_for("user")] == ["nc_talk_send"]


async def test_sent_text_cannot_notify_the_whole_room(toolbox: Toolbox, talk: FakeTalk) -> None:
    args = TalkSendArgs(message="@all the build is red")
    result = await toolbox.execute("nc_talk_send", args, ctx("user"))
    assert result.ok
    assert talk.messages[0].message != "@all the build is red"
    assert "all the build is red" in talk.messages[0].message


async def test_talk_refusing_the_message_is_a_tool_error(toolbox: Toolbox, talk: FakeTalk) -> None:
    talk.fail_next(401)
    result = await toolbox.execute("nc_talk_send", TalkSendArgs(message="hi"), ctx("user"))
    assert not result.ok
    assert "Talk did not accept the message" in result.text


async def test_t01_a_post_without_an_answer_tells_the_model_not_to_send_it_again(
    tmp_path: Path, talk: FakeTalk
) -> None:
    """Talk stored it after the client gave up: the model must not be led to post a copy."""
    store = Store.open(tmp_path / "talkbot.sqlite3", ManualClock())
    rooms = RoomDirectory(store, set)
    talk.throttle_next(0.5)
    async with aiohttp.ClientSession() as session:
        retry = RetryPolicy(attempts=3, message_timeout=0.2, connect_timeout=0.1)
        toolbox = Toolbox(
            make_talk_tools(TalkClient(session, talk.url, SECRET, retry=retry), rooms)
        )
        result = await toolbox.execute("nc_talk_send", TalkSendArgs(message="hi"), ctx("user"))
        await talk.wait_settled()
    await store.close()
    assert not result.ok
    assert "may have been posted" in result.text
    assert "Do not send it again" in result.text
    assert talk.texts() == ["hi"]
