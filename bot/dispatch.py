"""Runs inbox events: triaged on arrival, in turn within a room, rooms in parallel.

Each room has two lanes (H02, #14.2). Every event enters the room's intake, which triages
it in arrival order without waiting for any turn: what needs no turn (ignored messages,
file shares kept as context, Join/Leave) is handled there at once. The rest waits for the
room's turns in its queue (bot/queues.py: first in first out per person, people served in
rotation, so a flooding person slows only themselves; only chat turns count against the
room's places, fairly shared). An answer to a prompt or a command is never dropped for
anyone else's traffic.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial

import structlog

from bot.clock import Clock
from bot.crashpoints import crash_point
from bot.errors import LeaseLostError, StoreError
from bot.queues import RoomQueue, Waiting
from bot.replicas import Coordinator
from bot.routing import Lane, Triage
from bot.store import InboxItem, Store
from bot.talk.events import Event

log = structlog.get_logger(__name__)

Handle = Callable[[InboxItem], Awaitable[None]]
Notify = Callable[[InboxItem], Awaitable[None]]
# The event as parsed on arrival, if it was: triage need not parse its body again.
Triager = Callable[[InboxItem, Event | None], Awaitable[Triage]]
Act = Callable[[Triage], Awaitable[None]]

# An event whose handling was cut off this many times (crash loops) is given up.
MAX_ATTEMPTS = 3
BUSY_NOTICE_INTERVAL_S = 60.0
ROOM_QUEUE_CAP = 20
ROOM_FULL = "room queue full"  # why an event was dropped, as the inbox row says
# Events finished lately, remembered so a sweep's read from just before is not run again.
FINISHED_MEMORY = 4096


class Dispatcher:
    """Owns each busy room's intake and turn tasks; the inbox row is the unit of work."""

    def __init__(
        self,
        store: Store,
        handle: Handle,
        *,
        clock: Clock,
        triage: Triager | None = None,
        act: Act | None = None,
        concurrency: int = 8,
        room_queue_cap: int = ROOM_QUEUE_CAP,
        on_failure: Notify | None = None,
        on_overflow: Notify | None = None,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._store = store
        self._coordinator = coordinator
        self._handle = handle
        self._triage = triage
        self._act = act
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._cap = room_queue_cap
        self._on_failure = on_failure
        self._on_overflow = on_overflow
        self._intake: dict[
            str, collections.deque[tuple[InboxItem, bool, Event | Triage | None]]
        ] = {}
        # Per room: the events in its intake (or being triaged there) that were not
        # triaged on arrival. Until they are, nothing of the room is settled on arrival
        # (#19); a plain chat turn triaged already changes nothing for later events.
        self._unsure: dict[str, int] = {}
        # Per room: resolved once its unsure events are triaged (``when_sure``).
        self._sure: dict[str, asyncio.Future[None]] = {}
        self._turns: dict[str, RoomQueue] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._busy_noticed: dict[str, float] = {}
        self._dropped: dict[str, int] = {}
        self._finishing: list[tuple[int, str, str]] = []  # (id, status, error) this tick
        self._known: set[int] = set()  # events taken in and not finished or let go
        self._finished: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._stale: set[str] = set()  # rooms whose open events to read again (replicas)
        self._peak_queue = 0
        self._accepting = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        """Resume everything a previous process accepted but did not finish (with
        replicas: in the rooms this one may take up)."""
        self._accepting = True
        if self._coordinator is None or not self._coordinator.shared:
            resumed = await self._store.open_events()
        else:
            rooms = await self._claimable()
            resumed = [item for room in rooms for item in await self._store.open_events_in(room)]
        for item in resumed:
            await self._resume(item, resumed=True)
        if resumed:
            log.info("dispatch.resumed", events=len(resumed))

    async def sweep(self) -> None:
        """Take up accepted work that reached this replica through the store: a room whose
        holder died, or a webhook another replica stored for a room this one holds."""
        if not self._accepting:
            return
        taken = 0
        for room in await self._claimable():
            for item in await self._store.open_events_in(room):
                if self._accepting and item.id not in self._known and item.id not in self._finished:
                    await self._resume(item, resumed=item.attempts > 0)
                    taken += 1
        if taken:
            log.info("dispatch.taken_up", events=taken)

    async def _claimable(self) -> list[str]:
        assert self._coordinator is not None  # noqa: S101 - only called with replicas
        rooms = await self._coordinator.rooms_to_serve()
        return [room for room in rooms if await self._coordinator.may_serve(room)]

    async def _resume(self, item: InboxItem, *, resumed: bool) -> None:
        if item.attempts < MAX_ATTEMPTS:
            self._take_in(item, resumed=resumed)
            return
        log.error("dispatch.given_up", event_id=item.id, room=item.room)
        await self._store.finish_event(item.id, "failed", "interrupted too often")
        self._finish(item.id)
        # The process may have died for another reason each time (R09): never drop an
        # accepted message silently; the sender gets the apology.
        self._fire(self._notify(self._on_failure, item))

    def submit(self, item: InboxItem, parsed: Event | Triage | None = None) -> None:
        """A webhook just stored; ``parsed``: its event as the webhook read it, or already
        triaged there (a plain chat turn the router was sure of: no reads again)."""
        if not self._accepting:
            # Stored already; the next start resumes it.
            return
        if self._coordinator is None or not self._coordinator.shared:
            self._take_in(item, resumed=False, parsed=parsed)
            return
        # With replicas, earlier events of the room may have come through another one:
        # take up the room's open events in the order they were stored, this one with them.
        self._stale.add(item.room)
        self._start_worker(f"refresh:{item.room}", partial(self._refresh, item.room))

    async def _refresh(self, room: str) -> None:
        try:
            while room in self._stale and self._accepting:
                self._stale.discard(room)
                if not await self._coordinator_may_serve(room):
                    return  # the holder takes them up
                for item in await self._store.open_events_in(room):
                    if self._accepting:
                        self._take_in(item, resumed=item.attempts > 0)
        except StoreError:
            log.warning("dispatch.refresh_failed", room=room)  # the next sweep does it
        finally:
            self._retire(f"refresh:{room}")

    async def _coordinator_may_serve(self, room: str) -> bool:
        return self._coordinator is None or await self._coordinator.may_serve(room)

    def may_settle_at_once(self, room: str) -> bool:
        """Whether an event of ``room`` may be decided on arrival instead of triaged here
        (#19): this process is the store's only writer, and its intake holds nothing of
        the room still to be triaged (the event would overtake it: a `!mode` before it,
        say). A plain chat turn triaged on arrival does not count: it cannot change how
        later events are judged, and counting it sent the room's next events the usual
        way, each of which then held up the ones after it."""
        return self.settles_on_arrival and room not in self._unsure

    @property
    def settles_on_arrival(self) -> bool:
        """Whether anything may be settled on arrival: accepting, the store's only writer."""
        shared = self._coordinator is not None and self._coordinator.shared
        return self._accepting and not shared

    def when_sure(self, room: str) -> asyncio.Future[None] | None:
        """Resolved once the intake holds nothing of ``room`` still to be triaged, so
        that a webhook waiting behind such an event may be settled after all; None when
        nothing can be settled on arrival here (stopped, or replicas share the store)."""
        if not self.settles_on_arrival:
            return None
        sure = self._sure.get(room)
        if sure is None:
            sure = self._sure[room] = asyncio.get_running_loop().create_future()
            if room not in self._unsure:
                self._wake(room)
        return sure

    def _wake(self, room: str) -> None:
        sure = self._sure.pop(room, None)
        if sure is not None and not sure.done():
            sure.set_result(None)

    def refuses_turn(self, room: str, sender: str) -> bool:
        """Whether a chat turn of ``sender`` would be refused a place in ``room`` now, as
        ``_admit`` would refuse it (a flooded room): then stored dropped on arrival."""
        turns = self._turns.get(room)
        return turns is not None and turns.refuses_chat(sender, self._cap)

    def dropped_on_arrival(self, item: InboxItem) -> None:
        """A chat turn stored dropped on arrival (``refuses_turn``): counted, logged and
        answered with the busy notice as one dropped here would be."""
        self._busy(item)

    @property
    def room_queue_cap(self) -> int:
        return self._cap

    @property
    def peak_room_queue(self) -> int:
        """The most chat turns any room has had waiting: never above the cap (R07)."""
        return self._peak_queue

    @property
    def backlog(self) -> int:
        waiting = sum(len(q) for q in self._intake.values())
        return waiting + sum(len(t) for t in self._turns.values()) + len(self._workers)

    async def wait_idle(self) -> None:
        """Until every queued event has been handled (tests and shutdown)."""
        await self._idle.wait()

    async def stop(self, deadline_s: float) -> None:
        """Take no new work; let running turns finish within the deadline, then cancel."""
        self._accepting = False
        for intake in self._intake.values():
            intake.clear()  # still pending in the store; resumed on the next start
        self._unsure.clear()  # nothing is settled on arrival once stopped
        for room in list(self._sure):
            self._wake(room)  # their webhooks go the usual way: stored pending
        for turns in self._turns.values():
            turns.clear()
        self._known.clear()
        workers = list(self._workers.values())
        if not workers:
            return
        _done, pending = await asyncio.wait(workers, timeout=deadline_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("dispatch.cancelled_on_stop", turns=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    def _take_in(
        self, item: InboxItem, *, resumed: bool, parsed: Event | Triage | None = None
    ) -> None:
        """Into the room's intake: triaged in arrival order, never behind a turn."""
        if item.id in self._known or item.id in self._finished:
            return  # the webhook and a sweep both brought it
        self._known.add(item.id)
        if not isinstance(parsed, Triage):
            self._unsure[item.room] = self._unsure.get(item.room, 0) + 1
        self._intake.setdefault(item.room, collections.deque()).append((item, resumed, parsed))
        self._start_worker(f"intake:{item.room}", partial(self._drain_intake, item.room))

    def _start_worker(self, key: str, work: Callable[[], Coroutine[None, None, None]]) -> None:
        if key in self._workers:
            return  # it takes this event from its queue
        self._idle.clear()
        task = asyncio.create_task(work(), name=key)
        self._workers[key] = task
        task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("dispatch.worker_crashed", error=repr(exc))

    async def _drain_intake(self, room: str) -> None:
        intake = self._intake[room]
        try:
            if not await self._coordinator_may_serve(room):
                self._let_go(room)  # another replica holds the room: it takes them up
                return
            while intake and self._accepting:
                item, resumed, parsed = intake.popleft()
                try:
                    triaged = await self._triaged(item, parsed)
                    if triaged is not None and triaged.lane is Lane.NOW and self._act is not None:
                        await self._run(item, partial(self._act, triaged), turn=False)
                    else:
                        self._admit(item, triaged, resumed=resumed)
                finally:
                    if not isinstance(parsed, Triage):
                        self._sure_again(room)
        finally:
            self._retire(f"intake:{room}")
            if not intake:
                self._intake.pop(room, None)

    async def _triaged(self, item: InboxItem, parsed: Event | Triage | None) -> Triage | None:
        if isinstance(parsed, Triage):
            return parsed
        if self._triage is None:
            return None
        try:
            return await self._triage(item, parsed)
        except Exception:
            # Waits as a chat turn; its handling fails the same way and apologises.
            log.exception("dispatch.triage_failed", event_id=item.id, room=item.room)
            return None

    def _admit(self, item: InboxItem, triaged: Triage | None, *, resumed: bool) -> None:
        """Into the room's turns, unless its caps are reached (a resumed event always)."""
        chat = triaged is None or triaged.lane is Lane.CHAT
        waiting = Waiting(item, triaged.sender if triaged else "", chat)
        turns = self._turns.get(item.room)
        if turns is None:
            turns = RoomQueue()  # kept only if the event is
        if not resumed:
            admitted, displaced = turns.place(waiting, self._cap)
            if displaced is not None:
                self._overflow(displaced.item)
            if not admitted:
                self._overflow(item)
                return
        self._turns[item.room] = turns
        turns.push(waiting)
        self._peak_queue = max(self._peak_queue, turns.chats)
        self._start_worker(f"turns:{item.room}", partial(self._serve, item.room))

    async def _serve(self, room: str) -> None:
        turns = self._turns[room]
        try:
            while turns and self._accepting:
                if self._coordinator is not None and not self._coordinator.holds(room):
                    self._let_go(room)  # the lease lapsed: the next holder takes them up
                    break
                item = turns.pop().item
                async with self._slots:
                    if not self._accepting:
                        break  # stopped while waiting: still pending, resumed on next start
                    await self._run(item, partial(self._handle, item))
        finally:
            self._retire(f"turns:{room}")
            if not turns:
                self._turns.pop(room, None)

    def _sure_again(self, room: str, events: int = 1) -> None:
        left = self._unsure.get(room, 0) - events
        if left > 0:
            self._unsure[room] = left
        else:
            self._unsure.pop(room, None)
            self._wake(room)

    def _let_go(self, room: str) -> None:
        """Forget a room's queued events (still open in the store) for another replica."""
        intake = self._intake.get(room, ())
        waiting = [item for item, _, _ in intake]
        self._sure_again(room, sum(not isinstance(parsed, Triage) for _, _, parsed in intake))
        turns = self._turns.get(room)
        while turns:
            waiting.append(turns.pop().item)
        for item in waiting:
            self._known.discard(item.id)
        if room in self._intake:
            self._intake[room].clear()
        if waiting:
            log.info("dispatch.room_let_go", room=room, events=len(waiting))

    def _retire(self, key: str) -> None:
        self._workers.pop(key, None)
        if not self._workers:
            self._idle.set()

    async def _run(
        self, item: InboxItem, call: Callable[[], Awaitable[None]], *, turn: bool = True
    ) -> None:
        try:
            await self._run_once(item, call, turn=turn)
        except StoreError:  # its bookkeeping failed: the row stays open, resumed at start
            log.exception("dispatch.bookkeeping_failed", kind=item.kind)
            return  # still known: no sweep takes it up again in this process
        except LeaseLostError:
            # Still open in the store, for the room's holder now; taken up again here
            # only if this replica holds the room again some day and it is still open.
            log.warning("dispatch.lease_lost", room=item.room)
            self._known.discard(item.id)
            return
        self._finish(item.id)

    def _finish(self, event_id: int) -> None:
        """Done with an event here; a sweep that read it as open just before is ignored."""
        self._known.discard(event_id)
        self._finished[event_id] = None
        if len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    async def _run_once(
        self, item: InboxItem, call: Callable[[], Awaitable[None]], *, turn: bool
    ) -> None:
        # Counted, so an event that kills the process every time it runs is given up
        # after MAX_ATTEMPTS (R09), a turn or not (a Join's greeting posts to Talk too).
        await self._store.start_event(item.id)
        if turn:
            crash_point("turn_started")
        structlog.contextvars.bind_contextvars(room=item.room, event_id=item.id)
        try:
            await call()
        except (asyncio.CancelledError, LeaseLostError):
            raise  # left 'running' in the store: resumed on the next start, or by the holder
        except Exception:
            log.exception("dispatch.handler_failed", kind=item.kind)
            await self._store.finish_event(item.id, "failed", "handler error")
            await self._notify(self._on_failure, item)
        else:
            if not turn:
                # No turn: its row is marked done with the others of this tick, in one
                # statement (#19). Cut off before that commit, it is resumed at the next
                # start like any event left running.
                self._finish_later(item.id, "done", "")
                return
            crash_point("before_event_done")
            await self._store.finish_event(item.id)
        finally:
            structlog.contextvars.unbind_contextvars("room", "event_id")

    def _finish_later(self, event_id: int, status: str, error: str) -> None:
        self._finishing.append((event_id, status, error))
        if len(self._finishing) == 1:  # the first of this tick: one commit for them all
            self._fire(self._finish_batch())

    async def _finish_batch(self) -> None:
        try:
            await asyncio.sleep(0)  # let the rest of this tick's events join the batch
        finally:  # cancelled (stopping): they stay open in the store, resumed at start
            outcomes, self._finishing = self._finishing, []
        crash_point("before_batch_done")
        try:
            await self._store.finish_events(outcomes)
        except StoreError:
            # Still open in the store, resumed at the next start; known here meanwhile,
            # so no sweep takes them up again in this process (as a failed finish of a
            # single event stays known).
            log.warning("dispatch.finish_failed", events=len(outcomes))
            for event_id, _status, _error in outcomes:
                self._finished.pop(event_id, None)
                self._known.add(event_id)

    def _overflow(self, item: InboxItem) -> None:
        self._finish(item.id)
        self._finish_later(item.id, "dropped", ROOM_FULL)
        self._busy(item)

    def _busy(self, item: InboxItem) -> None:
        self._dropped[item.room] = self._dropped.get(item.room, 0) + 1
        now = self._clock.monotonic()
        last = self._busy_noticed.get(item.room)
        if last is None or now - last >= BUSY_NOTICE_INTERVAL_S:
            # One line and one notice per room and window, not one per dropped message.
            log.warning(
                "dispatch.room_overflow", room=item.room, dropped=self._dropped.pop(item.room)
            )
            self._busy_noticed[item.room] = now
            if self._on_overflow is not None:
                self._fire(self._notify(self._on_overflow, item))

    def _fire(self, coro: Awaitable[None]) -> None:
        """A short side task the dispatcher owns until it finishes."""
        task = asyncio.ensure_future(coro)
        key = f"side-{id(task)}"
        self._workers[key] = task
        self._idle.clear()

        def _done(done: asyncio.Task[None]) -> None:
            self._workers.pop(key, None)
            if not done.cancelled() and (exc := done.exception()) is not None:
                log.error("dispatch.side_task_failed", error=repr(exc))
            if not self._workers:
                self._idle.set()

        task.add_done_callback(_done)

    async def _notify(self, notify: Notify | None, item: InboxItem) -> None:
        if notify is None:
            return
        try:
            await notify(item)
        except Exception:
            log.exception("dispatch.notice_failed")
