"""The SQLite store: inbox durability and dedupe, rooms, history, roles, the lock (R12)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.errors import StoreError
from bot.store import HistoryEntry, Store


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Store:
    return Store.open(tmp_path / "db.sqlite3", clock)


async def accept(store: Store, random: str, key: str | None = "Create:r1:1") -> int | None:
    return await store.accept_event(
        room="r1", kind="Create", body=b'{"x":1}', random=random, dedupe_key=key
    )


async def test_accepted_event_is_open_until_finished(store: Store) -> None:
    event_id = await accept(store, "a" * 64)
    assert event_id is not None
    [item] = await store.open_events()
    assert (item.id, item.room, item.body) == (event_id, "r1", b'{"x":1}')
    await store.start_event(event_id)
    assert (await store.open_events())[0].attempts == 1  # 'running' is resumed too
    await store.finish_event(event_id)
    assert await store.open_events() == []


async def test_w04_same_random_is_refused(store: Store) -> None:
    assert await accept(store, "r" * 64, key=None) is not None
    assert await accept(store, "r" * 64, key=None) is None


async def test_w05_same_message_with_new_random_is_refused(store: Store) -> None:
    assert await accept(store, "a" * 64) is not None
    assert await accept(store, "b" * 64) is None


async def test_w05_housekeeping_drops_bodies_but_keeps_the_dedupe(
    store: Store, clock: ManualClock
) -> None:
    event_id = await accept(store, "a" * 64)
    assert event_id is not None
    await store.finish_event(event_id)
    clock.advance(30 * 24 * 3600)
    await store.purge()
    assert (await store.get_event(event_id)).body == b""  # type: ignore[union-attr]
    assert await accept(store, "b" * 64) is None  # a replay with a new random: still known
    assert await accept(store, "a" * 64, key="Create:r1:2") is None  # the old random too


async def test_housekeeping_never_touches_open_events(store: Store, clock: ManualClock) -> None:
    event_id = await accept(store, "a" * 64)
    assert event_id is not None
    clock.advance(365 * 24 * 3600)
    await store.purge()
    [item] = await store.open_events()
    assert item.body == b'{"x":1}'


async def test_events_survive_reopening(tmp_path: Path, clock: ManualClock) -> None:
    first = Store.open(tmp_path / "db.sqlite3", clock)
    await first.accept_event(room="r", kind="Create", body=b"{}", random="x" * 64, dedupe_key="k")
    await first.close()
    second = Store.open(tmp_path / "db.sqlite3", clock)
    assert len(await second.open_events()) == 1
    await second.close()


async def test_r12_a_second_process_on_the_same_store_is_refused(
    tmp_path: Path, clock: ManualClock
) -> None:
    first = Store.open(tmp_path / "db.sqlite3", clock)
    with pytest.raises(StoreError, match="in use by another talkbot"):
        Store.open(tmp_path / "db.sqlite3", clock)
    await first.close()
    Store.open(tmp_path / "db.sqlite3", clock)  # free again once closed


async def test_rooms_membership_and_mode(store: Store) -> None:
    await store.record_room("r1", name="Room", one_to_one=False, joined=True)
    await store.set_room_mode("r1", "all")
    await store.record_room("r1", name="Renamed", one_to_one=False)
    room = await store.get_room("r1")
    assert room is not None
    assert (room.name, room.mode, room.joined) == ("Renamed", "all", True)
    await store.record_room("r1", name="Renamed", one_to_one=False, joined=False)
    room = await store.get_room("r1")
    assert room is not None
    assert not room.joined


async def test_history_is_per_room_ordered_and_trimmed(store: Store) -> None:
    for i in range(10):
        await store.add_history("r1", HistoryEntry(role="user", content=f"m{i}"))
    await store.add_history("r2", HistoryEntry(role="user", content="other room"))
    recent = await store.recent_history("r1", 3)
    assert [e.content for e in recent] == ["m7", "m8", "m9"]
    await store.trim_history("r1", keep=2)
    assert [e.content for e in await store.recent_history("r1", 10)] == ["m8", "m9"]
    assert await store.forget_history("r1") == 2
    assert [e.content for e in await store.recent_history("r2", 10)] == ["other room"]


async def test_role_overrides_persist(store: Store) -> None:
    await store.set_role_override("bob", "admin", set_by="users/root")
    overrides = await store.role_overrides()
    assert overrides["bob"].role == "admin"
    assert await store.remove_role_override("bob")
    assert await store.role_overrides() == {}


async def test_audit_rows(store: Store) -> None:
    await store.audit(actor="users/a", room="r1", action="tool.refused", tool="x", outcome="no")
    [row] = await store.recent_audit()
    assert (row.actor, row.action, row.tool) == ("users/a", "tool.refused", "x")


async def test_webhooks_accepted_together_share_a_commit_and_still_dedupe(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = Store.open(tmp_path / "db.sqlite3", clock)
    results = await asyncio.gather(
        *(
            store.accept_event(
                room="r",
                kind="Create",
                body=b"{}",
                random=f"rand-{i}",
                dedupe_key=f"Create:r:{i % 5}",
            )
            for i in range(10)
        )
    )
    accepted = [r for r in results if r is not None]
    assert len(accepted) == 5
    assert results[5:] == [None] * 5  # the same messages again, in the same batch
    await store.close()
    reopened = Store.open(tmp_path / "db.sqlite3", clock)  # committed, not just queued
    assert len(await reopened.open_events()) == 5
