"""Replicas on one PostgreSQL store (P): any replica may receive any webhook; each room's
turns run once and in order on one of them; a dead replica's rooms are taken up; changes
made through one reach the others; ``!status`` lists them.

Two talkbot apps run in this process on one real PostgreSQL database (tests/pgserver.py),
with one fake Talk and one fake model; the replica timings are shortened.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import bot.replicas
from bot.clock import SystemClock
from bot.replicas import Coordinator, new_replica
from bot.scheduler import ScheduledJob
from bot.store import Store
from bot.tools import Tool
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.handlers.test_confirm import CODE, Run, danger_tool, said
from tests.harness import ADMIN_ROOM, GROUP, Daemon, create_event, running_daemon

ROOMS = [f"room{n:02d}" for n in range(6)]


@pytest.fixture(autouse=True)
def quick_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.replicas, "SWEEP_S", 0.05)
    monkeypatch.setattr(bot.replicas, "REVISION_CHECK_S", 0.1)


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path,
    talk: FakeTalk,
    llm: FakeLLM,
    url: str,
    *,
    count: int = 2,
    extra_tools: Sequence[Tool[Any]] = (),
) -> AsyncIterator[list[Daemon]]:
    async with contextlib.AsyncExitStack() as stack:
        daemons = []
        for n in range(count):
            home = tmp_path / f"replica{n}"
            home.mkdir()
            extra = {"storage": {"url": url, "lease_s": 3.0}, "chat": {"bot_name": "talkbot"}}
            daemon = await stack.enter_async_context(
                running_daemon(home, talk, llm, extra, clock=SystemClock(), extra_tools=extra_tools)
            )
            daemons.append(daemon)
        yield daemons


async def until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - polls state the fakes and daemons change
            await asyncio.sleep(0.02)


def answers(talk: FakeTalk) -> collections.Counter[int]:
    return collections.Counter(m.reply_to for m in talk.messages if m.reply_to is not None)


async def test_p07_any_replica_takes_webhooks_each_room_answered_once_and_in_order(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    llm.echo = True
    llm.latency_s = 0.05
    async with replicas(tmp_path, talk, llm, postgres_url) as daemons:
        sent: dict[str, list[int]] = {room: [] for room in ROOMS}

        async def one_room(index: int, room: str) -> None:
            for n in range(6):
                message_id = 1000 * (index + 1) + n
                event = create_event(f"@talkbot m-{room}-{n}", room=room, message_id=message_id)
                # Each message to the other replica than the one before.
                assert await daemons[(index + n) % 2].post(event) == 200
                sent[room].append(message_id)

        await asyncio.gather(*(one_room(i, room) for i, room in enumerate(ROOMS)))
        await until(lambda: len(answers(talk)) == 36)
        await asyncio.sleep(0.5)  # nothing more comes
        assert set(answers(talk).values()) == {1}, "a message answered twice"
        for room, ids in sent.items():
            replied = [m.reply_to for m in talk.messages if m.token == room]
            assert replied == ids, f"{room} answered out of order"
        holders = await daemons[0].runtime.running.store.room_holders()
        assert set(holders) <= set(ROOMS)


async def test_p07_a_dead_replicas_rooms_are_taken_up_by_another(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    llm.echo = True
    async with replicas(tmp_path, talk, llm, postgres_url) as daemons:
        first, second = daemons
        assert await first.post(create_event("@talkbot hello", room="rooma", message_id=1)) == 200
        await until(lambda: len(answers(talk)) == 1)
        store = first.runtime.running.store
        holder, _ = (await store.room_holders())["rooma"]
        assert holder == first.runtime.running.coordinator.me.id
        # The holder dies: its loop stops without handing the room back, and it takes
        # no more turns (as after kill -9, its lease is simply no longer renewed).
        dead = first.runtime.running
        task = dead.coordinator._task
        assert task is not None
        task.cancel()
        await dead.dispatcher.stop(0)
        # The next message reaches the survivor, which must wait out the lease.
        assert await second.post(create_event("@talkbot again", room="rooma", message_id=2)) == 200
        await asyncio.sleep(0.5)
        assert len(answers(talk)) == 1  # the lease is not yet expired: nobody answers
        await until(lambda: len(answers(talk)) == 2, timeout_s=10)
        assert answers(talk)[2] == 1
        holder, _ = (await store.room_holders())["rooma"]
        assert holder == second.runtime.running.coordinator.me.id


async def test_p07_a_replica_whose_lease_lapsed_mid_turn_posts_nothing(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    """The holder's heartbeat stalls while its turn waits on the model; the lease lapses,
    the other replica takes the room and answers the message. When the stalled turn's
    answer comes at last, the first replica posts nothing: one answer, the holder's."""
    async with replicas(tmp_path, talk, llm, postgres_url) as daemons:
        first, second = daemons
        llm.hang(4.0)  # the first replica's request: an answer only after its lease lapsed
        llm.reply("from the room's new holder")
        question = create_event("@talkbot a slow one", room="rooma", message_id=1)
        assert await first.post(question) == 200
        await llm.wait_for_requests(1)
        stalled = first.runtime.running.coordinator._task  # no more heartbeats from it
        assert stalled is not None
        stalled.cancel()
        await until(lambda: len(answers(talk)) == 1, timeout_s=15)
        await until(lambda: len(llm.requests) == 2)
        await first.runtime.running.dispatcher.wait_idle()  # its turn got its answer
        await asyncio.sleep(0.3)  # and would have posted it by now
        assert talk.texts("rooma") == ["from the room's new holder"]
        store = second.runtime.running.store
        assert await store.open_events_in("rooma") == []
        history = await store.recent_history("rooma", 10)
        assert [entry.message_id for entry in history if entry.role == "user"] == ["1"]


async def test_p07_r09_a_message_two_replicas_run_is_in_the_history_once(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    """The holder stalls after starting a message's turn, before recording it in the
    room's history; the other replica takes the room and answers; then the stalled one
    records it too, late. Every message is recorded once with replicas (the redo's own
    attempts count cannot tell it that another replica is still running the event)."""
    async with replicas(tmp_path, talk, llm, postgres_url) as daemons:
        first, second = daemons
        running = first.runtime.running
        gate = asyncio.Event()
        remember_room = running.router._remember_room

        async def stalled(event: Any) -> None:
            task = running.coordinator._task
            assert task is not None
            task.cancel()  # no more heartbeats: the lease lapses
            await gate.wait()
            await remember_room(event)

        running.router._remember_room = stalled  # type: ignore[method-assign]
        llm.reply("from the room's new holder")
        assert (
            await first.post(create_event("@talkbot a question", room="rooma", message_id=1)) == 200
        )
        await until(lambda: len(answers(talk)) == 1, timeout_s=15)
        gate.set()
        await running.dispatcher.wait_idle()
        assert talk.texts("rooma") == ["from the room's new holder"]
        history = await second.runtime.running.store.recent_history("rooma", 10)
        assert [entry.message_id for entry in history if entry.role == "user"] == ["1"]


async def test_p07_an_approve_through_another_replica_runs_it_and_answers_in_its_room(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    """`!approve` reaches the replica that does not hold the action's room: the call runs
    once, the requester's turn goes on and its answer is posted in the requester's room,
    and the admin is told (the lease check is for a turn that another replica redoes,
    never for a resumed one: the store hands a resume out once)."""
    runs: list[Run] = []
    tool = dataclasses.replace(danger_tool(runs), approver="either")  # an admin may approve
    async with replicas(tmp_path, talk, llm, postgres_url, extra_tools=[tool]) as daemons:
        first, second = daemons
        llm.call("danger_write", {"path": "notes.txt", "content": "hello"})
        assert await first.post(said("@talkbot please write notes.txt", 500)) == 200
        await until(lambda: any(CODE.search(m.message) for m in talk.messages))
        [code] = [match[1] for m in talk.messages if (match := CODE.search(m.message))]
        llm.reply("the resumed answer")
        approve = create_event(f"!approve {code}", sender="root", room=ADMIN_ROOM, message_id=900)
        assert await second.post(approve) == 200
        await until(lambda: "the resumed answer" in talk.texts(GROUP))
        await until(lambda: any(code in text for text in talk.texts(ADMIN_ROOM)))
        assert len(runs) == 1
        action = await second.runtime.running.store.pending_by_code(code)
        assert action is not None
        assert action.status == "done"


async def test_p02_two_yes_through_two_replicas_at_once_run_the_action_once(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    runs: list[Run] = []
    async with replicas(
        tmp_path, talk, llm, postgres_url, extra_tools=[danger_tool(runs)]
    ) as daemons:
        first, second = daemons
        llm.calls([("danger_write", {"path": "notes.txt", "content": "hello"}, None)])
        assert await first.post(said("@talkbot please write notes.txt", 500)) == 200
        await until(lambda: any(CODE.search(m.message) for m in talk.messages))
        [code] = [match[1] for m in talk.messages if (match := CODE.search(m.message))]
        for round_ in range(3):  # each round a race between the replicas
            yes = [said("yes", 501 + 2 * round_), said("yes", 502 + 2 * round_)]
            statuses = await asyncio.gather(first.post(yes[0]), second.post(yes[1]))
            assert statuses == [200, 200]
        await until(lambda: len(runs) >= 1)
        await asyncio.sleep(1.0)  # a second run would come now
        for daemon in daemons:
            await daemon.idle()
        assert runs == [Run("notes.txt", "hello", "users/alice", "user")]
        action = await second.runtime.running.store.pending_by_code(code)
        assert action is not None
        assert action.status == "done"


async def test_p08_roles_jobs_and_reload_through_one_replica_reach_the_other(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    async with replicas(tmp_path, talk, llm, postgres_url) as daemons:
        first, second = daemons
        other = second.runtime.running
        await first.say(create_event("!role carol admin", sender="root", room=ADMIN_ROOM))
        await until(lambda: other.access.role_of("users/carol") == "admin", 5)
        await first.say(create_event("!role carol default", sender="root", room=ADMIN_ROOM))
        await until(lambda: other.access.role_of("users/carol") != "admin", 5)

        assert other.scheduler.timer.armed() == set()
        job = ScheduledJob(
            id="digest",
            owner="users/root",
            room=ADMIN_ROOM,
            kind="every",
            expr="1h",
            timezone="UTC",
            message="hi",
            prompt=None,
            created_by_role="admin",
            paused=False,
            misfire="once",
            source="admin",
            created_at=0.0,
            active_since=0.0,
        )
        await first.runtime.running.scheduler.add(job)
        await until(lambda: other.scheduler.timer.armed() == {"digest"}, 5)
        await first.runtime.running.scheduler.remove("digest")
        await until(lambda: other.scheduler.timer.armed() == set(), 5)

        for daemon in daemons:
            new = daemon.settings.model_copy(
                update={"chat": daemon.settings.chat.model_copy(update={"persona": "terse"})}
            )
            daemon.runtime.load_settings = lambda new=new: new  # type: ignore[misc]
        [answer] = await first.say(create_event("!reload", sender="root", room=ADMIN_ROOM))
        assert "other replicas reload" in answer
        await until(lambda: second.settings.chat.persona == "terse", 5)


async def test_p09_status_lists_the_replicas_it_can_see(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, postgres_url: str
) -> None:
    async with replicas(tmp_path, talk, llm, postgres_url, count=2) as daemons:
        first, second = daemons
        [text] = await first.say(create_event("!status", sender="root", room=ADMIN_ROOM))
        for daemon in daemons:
            assert daemon.runtime.running.coordinator.me.id in text
        del second


async def test_p10_a_sweep_takes_a_fair_share_of_the_free_rooms(postgres_url: str) -> None:
    clock = SystemClock()
    stores = [Store.open_postgres(postgres_url, None, clock) for _ in range(2)]
    try:
        coordinators = [
            Coordinator(store, clock, new_replica(clock, "test"), shared=True, lease_s=15)
            for store in stores
        ]
        for coordinator in coordinators:
            await stores[0].heartbeat(coordinator.me, 15)
        for n in range(10):
            await stores[0].accept_event(
                room=f"room{n:02d}", kind="Create", body=b"{}", random=f"r{n}", dedupe_key=None
            )
        first, second = coordinators
        assert len(await first.alive()) == 2
        assert len(await second.alive()) == 2
        taken = await first.rooms_to_serve()
        assert len(taken) == 5  # half of the free rooms: the other replica takes the rest
        for room in taken:
            assert await first.may_serve(room)
        assert len(await first.rooms_to_serve()) == 5  # its own rooms, and no more
        rest = await second.rooms_to_serve()
        assert sorted(rest) == sorted({f"room{n:02d}" for n in range(10)} - set(taken))
    finally:
        for store in stores:
            await store.close()
