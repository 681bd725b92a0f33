"""Room history: newest kept within the count and the character budget, speakers named."""

from __future__ import annotations

from pathlib import Path

from bot.agent.history import History
from bot.clock import ManualClock
from bot.config import ChatSettings
from bot.store import Store


async def make(tmp_path: Path, **chat: object) -> History:
    store = Store.open(tmp_path / "db.sqlite3", ManualClock())
    return History(store, ChatSettings(**chat))  # type: ignore[arg-type]


async def say(history: History, room: str, text: str, who: str = "Alice") -> None:
    await history.record_message(
        room, actor_id=f"users/{who.lower()}", actor_name=who, text=text, message_id="1"
    )


async def test_messages_are_oldest_first_and_name_the_speaker(tmp_path: Path) -> None:
    history = await make(tmp_path)
    await say(history, "r", "hello")
    await history.record_tool("r", "current_time", "09:00")
    await history.record_reply("r", "Hi!")
    assert await history.messages("r") == [
        {"role": "user", "content": "Alice: hello"},
        {"role": "assistant", "content": "[current_time returned: 09:00]"},
        {"role": "assistant", "content": "Hi!"},
    ]


async def test_count_limit_keeps_the_newest(tmp_path: Path) -> None:
    history = await make(tmp_path, history_messages=3)
    for i in range(6):
        await say(history, "r", f"m{i}")
    contents = [m["content"] for m in await history.messages("r")]
    assert contents == ["Alice: m3", "Alice: m4", "Alice: m5"]


async def test_character_budget_drops_the_oldest_but_keeps_the_newest(tmp_path: Path) -> None:
    history = await make(tmp_path, history_chars=50)
    await say(history, "r", "x" * 40)
    await say(history, "r", "y" * 30)
    await say(history, "r", "z" * 200)  # alone over budget: still kept, it is the question
    contents = [m["content"] for m in await history.messages("r")]
    assert contents == ["Alice: " + "z" * 200]


async def test_rooms_are_separate_and_forget_is_per_room(tmp_path: Path) -> None:
    history = await make(tmp_path)
    await say(history, "a", "in a")
    await say(history, "b", "in b")
    assert await history.forget("a") == 1
    assert await history.messages("a") == []
    assert [m["content"] for m in await history.messages("b")] == ["Alice: in b"]


async def test_long_tool_results_are_shortened(tmp_path: Path) -> None:
    history = await make(tmp_path)
    await history.record_tool("r", "http_fetch", "p" * 5000)
    [message] = await history.messages("r")
    assert len(message["content"]) < 700
