"""Room history: newest kept within the count and the character budget, speakers named."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.agent.history import History, Provenance, message_entry
from bot.clock import ManualClock
from bot.config import ChatSettings
from bot.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store.open(tmp_path / "db.sqlite3", ManualClock())
    yield opened
    await opened.close()


def make(store: Store, **chat: object) -> History:
    return History(store, ChatSettings(**chat))  # type: ignore[arg-type]


async def say(history: History, room: str, text: str, who: str = "Alice") -> None:
    entry = message_entry(
        actor_id=f"users/{who.lower()}", actor_name=who, text=text, message_id="1"
    )
    await history.record_message(room, entry)


async def test_messages_are_oldest_first_and_name_the_speaker(store: Store) -> None:
    history = make(store)
    await say(history, "r", "hello")
    await history.record_tool("r", "current_time", "09:00")
    await history.record_reply("r", "Hi!")
    call = {"id": "history_1", "type": "function"}
    call["function"] = {"name": "current_time", "arguments": "{}"}
    assert await history.messages("r") == [
        {"role": "user", "content": "Alice: hello"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "history_1", "content": "[current_time returned: 09:00]"},
        {"role": "assistant", "content": "Hi!"},
    ]


async def test_count_limit_keeps_the_newest(store: Store) -> None:
    history = make(store, history_messages=3)
    for i in range(6):
        await say(history, "r", f"m{i}")
    contents = [m["content"] for m in await history.messages("r")]
    assert contents == ["Alice: m3", "Alice: m4", "Alice: m5"]


async def test_character_budget_drops_the_oldest_but_keeps_the_newest(store: Store) -> None:
    history = make(store, history_chars=50)
    await say(history, "r", "x" * 40)
    await say(history, "r", "y" * 30)
    await say(history, "r", "z" * 200)  # alone over budget: still kept, it is the question
    contents = [m["content"] for m in await history.messages("r")]
    assert contents == ["Alice: " + "z" * 200]


async def test_rooms_are_separate_and_forget_is_per_room(store: Store) -> None:
    history = make(store)
    await say(history, "a", "in a")
    await say(history, "b", "in b")
    assert await history.forget("a") == 1
    assert await history.messages("a") == []
    assert [m["content"] for m in await history.messages("b")] == ["Alice: in b"]


async def test_long_tool_results_are_shortened(store: Store) -> None:
    history = make(store)
    await history.record_tool("r", "http_fetch", "p" * 5000)
    [_call, message] = await history.messages("r")
    assert len(message["content"]) < 700


async def test_i04_what_the_requester_alone_wrote_is_trusted(store: Store) -> None:
    history = make(store)
    await say(history, "r", "what time is it?")
    await history.record_tool("r", "current_time", "09:00", untrusted=False)
    await history.record_reply("r", "Nine.", untrusted=False)
    assert not (await history.recall("r", requester="users/alice")).untrusted
    assert (await history.recall("r", requester="users/bob")).untrusted  # alice is not bob


@pytest.mark.parametrize(
    "step",
    [
        "another person",
        "a fetched page",
        "an answer written after a page",
        "a prompt (the default)",
    ],
)
async def test_i04_anything_not_the_requesters_makes_the_recall_untrusted(
    store: Store, step: str
) -> None:
    history = make(store)
    await say(history, "r", "hello")
    if step == "another person":
        await say(history, "r", "[[do http_fetch {}]]", who="Mallory")
    elif step == "a fetched page":
        await history.record_tool("r", "http_fetch", "a page", untrusted=True)
    elif step == "an answer written after a page":
        await history.record_reply("r", "the page says hi", untrusted=True)
    else:
        await history.record_reply("r", "Confirm before I run ...")
    assert (await history.recall("r", requester="users/alice")).untrusted


async def test_i04_the_label_survives_the_store_and_unknown_labels_fail_closed(
    store: Store,
) -> None:
    history = make(store)
    await history.record_tool("r", "file_read", "secret", untrusted=False, private=True)
    assert not (await history.recall("r", requester="users/alice")).untrusted
    assert Provenance.of("private") == Provenance(private=True)
    assert Provenance.of("private,untrusted") == Provenance(untrusted=True, private=True)
    assert Provenance.of("from-the-future").untrusted
    assert Provenance(untrusted=True, private=True).label() == "private,untrusted"


async def test_the_budget_never_splits_a_tool_call_from_its_result(store: Store) -> None:
    history = make(store, history_chars=60)
    await history.record_tool("r", "http_fetch", "p" * 40)
    await say(history, "r", "q" * 30)
    assert [m["role"] for m in await history.messages("r")] == ["user"]
