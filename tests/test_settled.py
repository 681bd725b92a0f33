"""Events settled on arrival (H08, #19): in a room this process knows, a message that is
nothing for the bot is stored done together with its history row, in one commit, and
never queued. What could change that verdict (a `!mode`, a confirmation prompt, the room
itself, a person Nextcloud is due to be asked about, replicas) sends events the usual
way, and these tests hold the verdict to the one triage would reach."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot import replies
from bot import webhook as webhook_module
from bot.clock import ManualClock
from bot.config import ConfirmSettings
from bot.confirmations import Confirmations, PendingCall, Requester
from bot.directory import Directory
from bot.dispatch import Dispatcher
from bot.errors import NextcloudError, StoreError
from bot.store import InboxItem, Store
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.handlers.test_confirm import Run, ask_for_write, danger_tool, said
from tests.harness import GROUP, Daemon, running_daemon
from tests.test_fairness import answers_to
from tests.test_replicas import until


class Queued:
    """What reached the dispatcher: the events that were not settled on arrival."""

    def __init__(self, daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ids: list[str] = []
        dispatcher: Dispatcher = daemon.runtime.running.dispatcher
        submit = dispatcher.submit

        def recording(item: InboxItem, parsed: Any = None) -> None:
            self.ids.append(_message_id(item))
            submit(item, parsed)

        monkeypatch.setattr(dispatcher, "submit", recording)


def _message_id(item: InboxItem) -> str:
    return str(json.loads(item.body)["object"]["id"])


async def statuses(daemon: Daemon) -> dict[str, str]:
    rows = await daemon.runtime.running.store._engine.read(
        "SELECT dedupe_key, status FROM inbox WHERE kind = 'Create'"
    )
    return {str(row["dedupe_key"]).rpartition(":")[2]: str(row["status"]) for row in rows}


async def history_ids(daemon: Daemon) -> list[str | None]:
    entries = await daemon.runtime.running.store.recent_history(GROUP, 100)
    return [entry.message_id for entry in entries]


async def test_h08_chatter_in_a_known_room_is_stored_done_with_its_history_unqueued(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        queued = Queued(daemon, monkeypatch)
        await daemon.say(said("morning all", 501))  # a room not seen yet: triaged
        await daemon.say(said("anyone for lunch?", 502))  # the room's mode is not known
        for message_id in (503, 504, 505):
            assert await daemon.post(said(f"chatter {message_id}", message_id)) == 200
            # Stored finished with its history row by the time the 200 came back.
            assert (await statuses(daemon))[str(message_id)] == "done"
            assert str(message_id) in await history_ids(daemon)
        await daemon.idle()
        assert queued.ids == ["501", "502"]
        assert await history_ids(daemon) == ["501", "502", "503", "504", "505"]
        assert await daemon.post(said("chatter 505", 505)) == 200  # a repeat: nothing
        await daemon.idle()
        assert await history_ids(daemon) == ["501", "502", "503", "504", "505"]
    assert talk.messages == []
    assert llm.requests == []


async def test_h08_a_message_after_mode_all_is_not_settled_under_the_old_mode(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        for message_id in (601, 602, 603):
            await daemon.say(said(f"chatter {message_id}", message_id))
        queued = Queued(daemon, monkeypatch)
        await daemon.say(said("!mode all", 604, sender="carol", participant_type="1"))
        llm.reply("four")
        assert await daemon.say(said("what is 2+2?", 605)) == ["four"]
        assert queued.ids == ["604", "605"]


async def test_h08_a_yes_to_a_prompt_is_never_settled_as_chatter(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[Run] = []
    tools = [danger_tool(runs)]
    async with running_daemon(
        tmp_path, talk, llm, clock=ManualClock(), extra_tools=tools
    ) as daemon:
        for message_id in (701, 702, 703):
            await daemon.say(said(f"chatter {message_id}", message_id))
        queued = Queued(daemon, monkeypatch)
        _prompt, code = await ask_for_write(daemon, message_id=704)
        daemon.llm.reply("done")
        await daemon.say(said(f"yes {code}", 705))
        assert [run.path for run in runs] == ["notes.txt"]
        assert queued.ids == ["704", "705"]
        # Answered, nothing waits: chatter is settled on arrival again.
        await daemon.say(said("chatter 706", 706))
        await daemon.say(said("chatter 707", 707))
        assert queued.ids == ["704", "705", "706"]


async def test_h08_nothing_is_settled_on_arrival_with_replicas() -> None:
    class Shared:
        shared = True

    dispatcher = Dispatcher(
        store=None,  # type: ignore[arg-type]
        handle=None,  # type: ignore[arg-type]
        clock=ManualClock(),
        coordinator=Shared(),  # type: ignore[arg-type]
    )
    dispatcher._accepting = True
    assert not dispatcher.may_settle_at_once(GROUP)
    dispatcher._coordinator = None
    assert dispatcher.may_settle_at_once(GROUP)


async def test_h06_h08_settled_chatter_keeps_the_history_bounded(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row after which a room is trimmed is trimmed in the settled commit too."""
    extra = {"chat": {"history_messages": 5}}  # keeps 4 x 5 rows, trimmed every 16 new
    async with running_daemon(tmp_path, talk, llm, extra, clock=ManualClock()) as daemon:
        queued = Queued(daemon, monkeypatch)
        for number in range(120):
            await daemon.say(said(f"chatter {number}", 800 + number))
        kept = await daemon.runtime.running.store.recent_history(GROUP, 10_000)
    assert queued.ids == ["800", "801"]  # the rest settled on arrival
    assert len(kept) <= 5 * 4 + 16
    assert kept[-1].content == "chatter 119"


@pytest.mark.timing  # a turn held for a wall-clock second while the room floods
async def test_r07_h08_a_flooded_rooms_next_turns_are_stored_dropped_in_one_write(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a room's places are all taken, its flooder's next questions are stored
    dropped on arrival (one write each, never queued, never marked twice) with the one
    busy notice; someone else's question still takes a place as before (R07)."""
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        dispatcher = daemon.runtime.running.dispatcher
        cap = dispatcher.room_queue_cap
        await daemon.say(said("morning", 900))
        await daemon.say(said("anyone?", 901))  # the room is known: its mode, no prompt
        llm.hang(1.0)
        llm.echo = True
        assert await daemon.post(said("talkbot, think hard", 902)) == 200
        await llm.wait_for_requests(1)
        queued = Queued(daemon, monkeypatch)
        for n in range(cap):
            assert await daemon.post(said(f"talkbot, question {n}", 910 + n)) == 200
        while dispatcher.peak_room_queue < cap or GROUP in dispatcher._intake:  # noqa: ASYNC110 - polls the dispatcher, which has no event for it
            await asyncio.sleep(0.01)
        flood = [950 + n for n in range(5)]
        for message_id in flood:
            assert await daemon.post(said(f"talkbot, more {message_id}", message_id)) == 200
        assert await daemon.post(said("talkbot, my turn?", 960, sender="bob")) == 200
        rows = await statuses(daemon)
        await daemon.idle()
    assert [rows[str(message_id)] for message_id in flood] == ["dropped"] * 5
    assert queued.ids == [str(910 + n) for n in range(cap)] + ["960"]
    busy = [m for m in talk.messages if m.message == replies.busy()]
    assert len(busy) == 1
    answered = {m.reply_to for m in talk.messages if m.message != replies.busy()}
    assert 960 in answered  # bob took the newest of alice's places
    assert not answered & set(flood)


def slow_next_commit(store: Store, seconds: float) -> Callable[[], None]:
    """The store's next transaction takes ``seconds`` longer (a slow fsync); call the
    returned function to arm it."""
    driver = store._engine.driver
    real = driver.transaction
    armed = threading.Event()

    def transaction(work: Any) -> Any:
        if armed.is_set():
            armed.clear()
            time.sleep(seconds)
        return real(work)

    driver.transaction = transaction  # type: ignore[method-assign]
    return armed.set


@pytest.mark.timing  # a commit held for a wall-clock 0.3 s
async def test_h08_a_message_never_overtakes_an_earlier_one_still_being_stored(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """`!mode all`, then a question while the `!mode` webhook's commit is under way: the
    question must not be settled under the old mode before `!mode` reaches the intake."""
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        for message_id in (601, 602, 603):
            await daemon.say(said(f"chatter {message_id}", message_id))
        slow_next_commit(daemon.runtime.running.store, 0.3)()
        llm.reply("four")
        mode = asyncio.create_task(
            daemon.post(said("!mode all", 604, sender="carol", participant_type="1"))
        )
        await asyncio.sleep(0.1)  # !mode's commit is under way
        assert await daemon.post(said("what is 2+2?", 605)) == 200
        assert await mode == 200
        await daemon.idle()
    assert answers_to(talk, 605) == ["four"]


@pytest.mark.timing  # a commit held for a wall-clock 0.3 s
async def test_h08_no_room_is_sure_of_no_prompt_while_one_is_being_stored(
    tmp_path: Path,
) -> None:
    """A confirmation being stored behind a slow commit while a triage looks at the same
    room: the look finds nothing, yet the room is not taken as having nothing waiting."""
    clock = ManualClock()
    store = Store.open(tmp_path / "talkbot.sqlite3", clock)
    confirmations = Confirmations(store, clock, ConfirmSettings(ttl_s=600))
    alice = Requester(actor_id="users/alice", name="Alice", room=GROUP, message_id="100")
    write = PendingCall("call_1", "file_write", '{"path":"a.txt"}', "requester")
    try:
        slow_next_commit(store, 0.3)()
        other = asyncio.create_task(store.record_room("otherroom1", name="x", one_to_one=False))
        await asyncio.sleep(0.05)  # another room's commit under way
        request = asyncio.create_task(confirmations.request(alice, [write], "{}"))
        await asyncio.sleep(0)  # the request's write waits behind it
        assert await confirmations.open_in_room(GROUP) == []  # a triage meanwhile
        await request
        await other
        assert [a.requester for a in await store.open_pending(GROUP)] == ["users/alice"]
        assert not confirmations.known_none_open(GROUP)
        assert len(await confirmations.open_in_room(GROUP)) == 1
        assert not confirmations.known_none_open(GROUP)
    finally:
        await store.close()


async def test_h08_a_plain_chat_turn_is_triaged_once_on_arrival_and_answered(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message naming the bot in a room the router is sure of is queued with the triage
    the webhook made: the intake does not read the room again (it is classified once more
    when its turn comes, as every queued event is)."""
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        await daemon.say(said("morning", 1101))
        await daemon.say(said("anyone?", 1102))
        dispatcher = daemon.runtime.running.dispatcher
        triaged_at_intake: list[int] = []
        triage = dispatcher._triage
        assert triage is not None

        async def counting(item: InboxItem, parsed: Any = None) -> Any:
            triaged_at_intake.append(item.id)
            return await triage(item, parsed)

        monkeypatch.setattr(dispatcher, "_triage", counting)
        llm.reply("hello")
        assert await daemon.say(said("talkbot, hello?", 1103)) == ["hello"]
        assert triaged_at_intake == []
        await daemon.say(said("!mode all", 1104, sender="carol", participant_type="1"))
        assert len(triaged_at_intake) == 1  # a command: triaged at the intake as usual


class HeldTriage:
    """The intake's triage of one message waits until ``release`` is set."""

    def __init__(self, daemon: Daemon, monkeypatch: pytest.MonkeyPatch, message_id: int) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        dispatcher = daemon.runtime.running.dispatcher
        triage = dispatcher._triage
        assert triage is not None

        async def held(item: InboxItem, parsed: Any = None) -> Any:
            if _message_id(item) == str(message_id):
                self.started.set()
                await self.release.wait()
            return await triage(item, parsed)

        monkeypatch.setattr(dispatcher, "_triage", held)


async def command_held_in_triage(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, first_id: int
) -> tuple[Queued, HeldTriage, asyncio.Task[int]]:
    """A known room (two messages, ``first_id`` and the next), then `!help` (the id after)
    stored the usual way, its triage held: what reaches the dispatcher from then on, the
    hold, and the `!help` webhook's post."""
    for message_id in (first_id, first_id + 1):
        await daemon.say(said(f"chatter {message_id}", message_id))
    queued = Queued(daemon, monkeypatch)
    held = HeldTriage(daemon, monkeypatch, first_id + 2)
    command = asyncio.create_task(daemon.post(said("!help", first_id + 2)))
    await held.started.wait()
    return queued, held, command


async def arrived(daemon: Daemon, posts: list[asyncio.Task[int]]) -> None:
    """Until each of the room's ``posts`` is answered or waits for an earlier event."""
    webhook = daemon.runtime.running.webhook
    async with asyncio.timeout(5):
        while True:
            gate = webhook._gates.get(GROUP)
            if (gate.waiting if gate else 0) + sum(post.done() for post in posts) >= len(posts):
                return
            await asyncio.sleep(0.005)


async def test_h08_chatter_behind_an_event_still_to_be_triaged_waits_then_is_settled(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy room's chatter that arrives while an earlier event is still being triaged
    waits for it and is settled after it, in arrival order, instead of going the usual
    way (a second commit and the store's reads each, and each would hold up the next)."""
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        queued, held, command = await command_held_in_triage(daemon, monkeypatch, 801)
        chatter = [
            asyncio.create_task(daemon.post(said(f"chatter {n}", n))) for n in (804, 805, 806)
        ]
        await arrived(daemon, chatter)
        assert not any(task.done() for task in chatter)  # waiting: no 200 before their turn
        held.release.set()
        assert await asyncio.gather(command, *chatter) == [200] * 4
        await daemon.idle()
        assert queued.ids == ["803"]
        assert await history_ids(daemon) == ["801", "802", "804", "805", "806"]
        assert (await statuses(daemon))["806"] == "done"
        assert daemon.runtime.running.webhook._gates == {}
    assert len(talk.messages) == 1  # the help
    assert llm.requests == []


async def test_h08_events_waiting_their_turn_are_judged_in_arrival_order(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`!mode all` and a question both wait behind an event still being triaged: the
    question is judged after `!mode` has taken effect, so it is answered, not settled as
    chatter under the old mode."""
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        queued, held, first = await command_held_in_triage(daemon, monkeypatch, 901)
        mode = asyncio.create_task(
            daemon.post(said("!mode all", 904, sender="carol", participant_type="1"))
        )
        await arrived(daemon, [mode])
        question = asyncio.create_task(daemon.post(said("what is 2+2?", 905)))
        await arrived(daemon, [mode, question])
        llm.reply("four")
        held.release.set()
        assert await asyncio.gather(first, mode, question) == [200] * 3
        await daemon.idle()
        assert queued.ids == ["903", "904", "905"]
    assert answers_to(talk, 905) == ["four"]


async def test_h08_a_webhook_waits_its_turn_briefly_then_goes_the_usual_way(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier event whose triage takes long (Nextcloud slow to name a person's
    groups, say) holds up a later one's 200 for ORDER_WAIT_S at most: it is then stored
    pending and triaged after the earlier one, as before."""
    monkeypatch.setattr(webhook_module, "ORDER_WAIT_S", 0.05)
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        queued, held, first = await command_held_in_triage(daemon, monkeypatch, 1001)
        assert await daemon.post(said("chatter 1004", 1004)) == 200
        assert (await statuses(daemon))["1004"] == "pending"  # its triage waits its turn
        held.release.set()
        assert await first == 200
        await daemon.idle()
        assert queued.ids == ["1003", "1004"]
        assert await history_ids(daemon) == ["1001", "1002", "1004"]
        assert daemon.runtime.running.webhook._gates == {}


@pytest.mark.timing  # wall-clock waits of 0.3 s each
async def test_h08_a_webhook_waits_its_turn_for_order_wait_s_from_its_arrival(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three webhooks behind an earlier event whose triage takes long: each waits
    ORDER_WAIT_S from its own arrival, not that long after the one ahead of it gave up."""
    monkeypatch.setattr(webhook_module, "ORDER_WAIT_S", 0.3)
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        _queued, held, first = await command_held_in_triage(daemon, monkeypatch, 1101)
        started = time.monotonic()
        chatter = [daemon.post(said(f"chatter {n}", n)) for n in (1104, 1105, 1106)]
        assert await asyncio.gather(*chatter) == [200] * 3
        assert time.monotonic() - started < 0.6  # 0.9 s if each waited after the one ahead
        held.release.set()
        assert await first == 200
        await daemon.idle()
        assert await history_ids(daemon) == ["1101", "1102", "1104", "1105", "1106"]


async def test_h08_a_webhook_during_drain_never_overtakes_one_waiting_its_turn(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped (draining, the port still open), a new webhook goes the usual way, but
    behind the room's webhooks still waiting their turn: stored after them, so the next
    start resumes them in arrival order and the question after `!mode all` is answered."""
    monkeypatch.setattr(webhook_module, "ORDER_WAIT_S", 2.0)
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        for message_id in (1201, 1202):
            await daemon.say(said(f"chatter {message_id}", message_id))
        running = daemon.runtime.running
        store, webhook, dispatcher = running.store, running.webhook, running.dispatcher
        release = asyncio.Event()
        accept = store.accept_event

        async def slow(**kw: Any) -> Any:  # 1203's commit takes a while to come back
            stored = await accept(**kw)
            if str(kw.get("dedupe_key", "")).endswith(":1203"):
                await release.wait()
            return stored

        monkeypatch.setattr(store, "accept_event", slow)
        first = asyncio.create_task(daemon.post(said("!help", 1203)))
        await until(lambda: GROUP in webhook._unsettled)
        mode = asyncio.create_task(
            daemon.post(said("!mode all", 1204, sender="carol", participant_type="1"))
        )
        await arrived(daemon, [mode])
        await dispatcher.stop(1.0)  # drain: the port still takes webhooks
        question = asyncio.create_task(daemon.post(said("what is 2+2?", 1205)))
        await asyncio.sleep(0.05)
        assert not question.done()  # behind 1204, which waits for 1203's commit
        release.set()
        assert await asyncio.gather(first, mode, question) == [200, 200, 200]
        llm.reply("four")
        await dispatcher.start()  # as the next process would: open events in id order
        await daemon.idle()
        rows = await store._engine.read("SELECT dedupe_key FROM inbox ORDER BY id")
        order = [str(row["dedupe_key"]).rpartition(":")[2] for row in rows]
        assert [m for m in order if m in ("1203", "1204", "1205")] == ["1203", "1204", "1205"]
    assert answers_to(talk, 1205) == ["four"]


async def test_h08_stopping_resolves_what_waiting_webhooks_wait_for() -> None:
    """Stopping resolves each room's `when_sure`: nothing is settled on arrival any
    more, so a webhook waiting for its room goes the usual way, stored pending."""
    dispatcher = Dispatcher(
        store=None,  # type: ignore[arg-type]
        handle=None,  # type: ignore[arg-type]
        clock=ManualClock(),
    )
    dispatcher._accepting = True
    dispatcher._unsure[GROUP] = 1
    sure = dispatcher.when_sure(GROUP)
    assert sure is not None
    assert not sure.done()
    assert dispatcher.when_sure(GROUP) is sure  # one per room
    await dispatcher.stop(0.1)
    assert sure.done()
    assert dispatcher.when_sure(GROUP) is None
    assert not dispatcher.settles_on_arrival


class People:
    """A Nextcloud that knows bob in the staff group, or is down."""

    def __init__(self) -> None:
        self.down = False
        self.asked: list[str] = []

    async def groups_of(self, uid: str) -> tuple[str, ...] | None:
        self.asked.append(uid)
        if self.down:
            raise NextcloudError("unreachable")
        return ("staff",)

    async def language_of(self, uid: str) -> str | None:  # noqa: ARG002 - the protocol's
        return None


async def test_h08_a_person_nextcloud_is_due_to_be_asked_about_is_not_settled() -> None:
    """`answers_at_once` is what settling relies on: True exactly when ensure_actor would
    not ask Nextcloud (a known, fresh answer; not a Nextcloud account; asking paused)."""
    clock = ManualClock()
    people = People()
    directory = Directory(people, clock, ttl_s=300, stale_s=3600, wait_s=1.0)
    assert not directory.answers_at_once("users/bob")  # never asked
    await directory.ensure_actor("users/bob")
    assert directory.answers_at_once("users/bob")  # a fresh answer
    assert directory.answers_at_once("guests/abc")  # no account to ask about
    clock.advance(301)
    assert not directory.answers_at_once("users/bob")  # due again
    people.down = True
    await directory.ensure_actor("users/bob")  # fails: asking pauses
    assert directory.answers_at_once("users/bob")  # as ensure_actor would not ask now
    clock.advance(3600)
    assert not directory.answers_at_once("users/bob")  # the pause is over
    assert people.asked == ["bob", "bob"]
    assert Directory(None, clock, ttl_s=300, stale_s=3600).answers_at_once("users/bob")


async def test_r09_a_message_redone_after_a_restart_is_in_its_history_once(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message handled at once whose batched `done` never committed (the process died
    first) is redone by the next process, which finds its history row already there."""
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        store = daemon.runtime.running.store

        async def cut_off(_outcomes: Any) -> None:
            raise StoreError("the process died before this commit")

        monkeypatch.setattr(store, "finish_events", cut_off)
        await daemon.say(said("morning all", 1201))  # a room not seen yet: acted on at once
        await daemon.say(said("talkbot, anyone?", 1202))  # a turn, finished on its own
        assert (await statuses(daemon))["1201"] == "running"
        assert await history_ids(daemon) == ["1201", "1202", None]
    monkeypatch.undo()
    async with running_daemon(tmp_path, talk, llm, clock=ManualClock()) as daemon:
        await daemon.idle()
        assert (await statuses(daemon))["1201"] == "done"
        assert await history_ids(daemon) == ["1201", "1202", None]
        await daemon.say(said("and again", 1203))  # the room goes on as before
        assert await history_ids(daemon) == ["1201", "1202", None, "1203"]
