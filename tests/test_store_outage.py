"""A store that cannot commit (H04): locked by another process, or its disk full.

Webhooks are refused with 503 (not acknowledged, never a 500) while the event loop keeps
answering; /readyz goes unready with the reason; the admin room is told once, and once
more when the store is back, which happens by itself; what was acknowledged before is
answered exactly once.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import bot.replicas
from bot.clock import ManualClock
from bot.errors import StoreUnavailableError
from bot.store import Store
from bot.store.engine import HUNG_AFTER_S
from bot.store.inbox import INTAKE_BUDGET_S
from bot.talk.events import parse_event
from tests.fakes.llm_server import DEFAULT_REPLY, FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import ADMIN_ROOM, ONE2ONE, Daemon, dm_event, php_json, running_daemon
from tests.test_process import make_config, serve
from tests.test_store import hold_write_lock

pytestmark = pytest.mark.timing  # races a wall-clock deadline: run alone (scripts/check)

HEALTHZ_LIMIT_S = 0.1


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any], float]:
    """Status, JSON body and how long the answer took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.get(url) as resp:
        return resp.status, await resp.json(), loop.time() - started


async def refused_while_healthz_answers(
    session: aiohttp.ClientSession, base: str, post: asyncio.Task[int]
) -> float:
    """Poll /healthz until the webhook ``post`` is answered; the slowest /healthz answer."""
    slowest = 0.0
    while not post.done():
        status, _body, took = await get(session, f"{base}/healthz")
        assert status == 200
        slowest = max(slowest, took)
        await asyncio.sleep(0.05)
    return slowest


async def wait_ready(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """/readyz is 200 again within 5 s, without a restart."""
    async with asyncio.timeout(5):
        while True:
            status, body, _took = await get(session, f"{base}/readyz")
            if status == 200:
                return body
            await asyncio.sleep(0.05)


async def admin_texts(talk: FakeTalk, count: int) -> list[str]:
    async with asyncio.timeout(5):
        while len(talk.texts(ADMIN_ROOM)) < count:
            await talk.wait_for_messages(len(talk.messages) + 1)
    return talk.texts(ADMIN_ROOM)


async def accept_two_and_start_the_first(daemon: Daemon, llm: FakeLLM) -> None:
    """Event 1's turn is running (its model answer comes in 1 s), event 2 waits behind it."""
    llm.hang(1.0)
    llm.reply("answer to the second")
    assert await daemon.post(dm_event("talkbot, first", message_id=9001)) == 200
    assert await daemon.post(dm_event("talkbot, second", message_id=9002)) == 200
    await llm.wait_for_requests(1)


async def answered_once_each(daemon: Daemon, llm: FakeLLM, talk: FakeTalk) -> None:
    await daemon.idle()
    assert talk.texts(ONE2ONE) == [DEFAULT_REPLY, "answer to the second"]
    assert len(llm.requests) == 2
    assert await daemon.runtime.running.store.inbox_backlog() == 0
    llm.reply("welcome back")
    assert await daemon.say(dm_event("talkbot, after", message_id=9010)) == ["welcome back"]


async def test_h04_a_locked_store_refuses_webhooks_with_503_and_recovers_by_itself(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, clock: ManualClock
) -> None:
    async with running_daemon(tmp_path, talk, llm, clock=clock) as daemon:
        await accept_two_and_start_the_first(daemon, llm)
        loop = asyncio.get_running_loop()
        async with hold_write_lock(tmp_path / "talkbot.sqlite3"):
            started = loop.time()
            post = asyncio.create_task(daemon.post(dm_event("talkbot, lost?", message_id=9003)))
            slowest = await refused_while_healthz_answers(daemon.session, daemon.url, post)
            assert await post == 503  # not acknowledged: Talk's sender sees it failed
            assert loop.time() - started < 3.0
            assert slowest < HEALTHZ_LIMIT_S
            status, body, _took = await get(daemon.session, f"{daemon.url}/readyz")
            assert (status, body["ready"], body["store"]) == (503, False, "unavailable")
            assert "locked" in body["store_error"]
            started = loop.time()
            assert await daemon.post(dm_event("talkbot, again", message_id=9004)) == 503
            assert loop.time() - started < 1.0  # known down: refused without the 2 s wait
            [notice] = await admin_texts(talk, 1)
            assert "cannot save" in notice
            assert "locked" in notice
        body = await wait_ready(daemon.session, daemon.url)
        assert (body["store"], body["store_error"]) == ("open", None)
        [_notice, recovered] = await admin_texts(talk, 2)
        assert "can save again" in recovered
        await answered_once_each(daemon, llm, talk)
    assert len(talk.texts(ADMIN_ROOM)) == 2  # once per outage, plus the recovery


async def test_h04_a_full_disk_refuses_webhooks_and_recovers_when_space_returns(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, clock: ManualClock
) -> None:
    async with running_daemon(tmp_path, talk, llm, clock=clock) as daemon:
        store = daemon.runtime.running.store
        await accept_two_and_start_the_first(daemon, llm)
        await store.limit_growth_for_tests(0)  # SQLITE_FULL, as on a full disk
        long = "talkbot, " + "a long message " * 1000
        assert await daemon.post(dm_event(long, message_id=9003)) == 503
        status, body, _took = await get(daemon.session, f"{daemon.url}/readyz")
        assert (status, body["store"]) == (503, "unavailable")
        assert "full" in body["store_error"]
        [notice] = await admin_texts(talk, 1)
        assert "full" in notice
        await talk.wait_for_messages(2)  # the first turn's answer, written meanwhile
        await store.limit_growth_for_tests(None)  # space returns
        await wait_ready(daemon.session, daemon.url)
        [_notice, recovered] = await admin_texts(talk, 2)
        assert "can save again" in recovered
        await answered_once_each(daemon, llm, talk)
    assert len(talk.texts(ADMIN_ROOM)) == 2


async def test_h04_the_real_process_keeps_answering_while_its_store_is_locked(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    config = make_config(tmp_path, talk, llm)
    async with serve(config) as daemon, aiohttp.ClientSession() as session:
        async with hold_write_lock(tmp_path / "talkbot.sqlite3"):
            body = php_json(dm_event("talkbot, are you there?", message_id=9101))
            post = asyncio.create_task(daemon.post(body))
            slowest = await refused_while_healthz_answers(session, daemon.url, post)
            assert await post == 503
            assert slowest < HEALTHZ_LIMIT_S
            status, ready, _took = await get(session, f"{daemon.url}/readyz")
            assert status == 503
            assert "locked" in ready["store_error"]
            [notice] = await admin_texts(talk, 1)
            assert "locked" in notice
        await wait_ready(session, daemon.url)
        llm.reply("here again")
        assert await daemon.post(php_json(dm_event("talkbot, now?", message_id=9102))) == 200
        await talk.wait_for_messages(3)
    assert talk.texts(ONE2ONE) == ["here again"]
    assert len(talk.texts(ADMIN_ROOM)) == 2


async def test_h04_an_event_stored_after_its_webhook_was_refused_is_still_answered(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A commit that hung past the webhook's budget (503) can still go through: the row is
    # then in the inbox with nobody holding it. The sweep takes it up.
    monkeypatch.setattr(bot.replicas, "ORPHAN_SWEEP_S", 0.1)
    async with running_daemon(tmp_path, talk, llm) as daemon:
        body = php_json(dm_event("stored late"))
        event = parse_event(body)
        stored = await daemon.runtime.running.store.accept_event(
            room=event.room.token,
            kind=event.type,
            body=body,
            random="late" * 16,
            dedupe_key=event.dedupe_key,
            message_id=event.talk_message_number,
        )
        assert stored is not None  # stored, never submitted: as after a hung commit
        [answer] = await talk.wait_for_messages(1)
        assert answer.message == DEFAULT_REPLY
        assert answer.reply_to == int(event.message.id)  # type: ignore[union-attr]
        await asyncio.sleep(0.3)  # later sweeps take it up no more
        assert len(talk.messages) == 1


async def test_h04_writes_behind_a_hung_commit_are_each_refused_at_their_own_deadline(
    tmp_path: Path,
) -> None:
    """A webhook whose commit hangs (a disk that stopped answering) is refused once its
    budget and the grace for a commit under way are spent, and so is each one queued
    behind it, at its own time: not at the first one's, and not never."""
    store = Store.open(tmp_path / "talkbot.sqlite3", ManualClock())
    driver = store._engine.driver
    real, release = driver.transaction, threading.Event()

    def hanging(work: Any) -> Any:
        release.wait(30)  # a disk that stopped answering
        return real(work)

    async def webhook(n: int) -> tuple[float, BaseException | None]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await store.accept_event(
                room="r1", kind="Create", body=b"{}", random=f"{n:032d}", dedupe_key=f"k{n}"
            )
        except StoreUnavailableError as exc:
            return loop.time() - started, exc
        return loop.time() - started, None

    try:
        assert await store.accept_event(  # a commit in time is answered, never refused later
            room="r1", kind="Create", body=b"{}", random="0" * 32, dedupe_key="k0"
        )
        driver.transaction = hanging  # type: ignore[method-assign]
        first = asyncio.create_task(webhook(1))
        await asyncio.sleep(0.6)
        second = asyncio.create_task(webhook(2))  # queued behind the hung commit
        outcomes = await asyncio.wait_for(asyncio.gather(first, second), 10)
    finally:
        release.set()
        await store.close()
    allowed = INTAKE_BUDGET_S + HUNG_AFTER_S
    for waited, error in outcomes:
        assert isinstance(error, StoreUnavailableError)
        assert "no commit within" in str(error)
        assert allowed - 0.05 <= waited < allowed + 0.5
