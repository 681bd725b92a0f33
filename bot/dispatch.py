"""Runs inbox events: in order within a room, rooms in parallel, under a global cap."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

import structlog

from bot.clock import Clock
from bot.crashpoints import crash_point
from bot.store import InboxItem, Store

log = structlog.get_logger(__name__)

Handle = Callable[[InboxItem], Awaitable[None]]
Notify = Callable[[InboxItem], Awaitable[None]]

# An event whose handling was cut off this many times (crash loops) is given up.
MAX_ATTEMPTS = 3
BUSY_NOTICE_INTERVAL_S = 60.0


class Dispatcher:
    """Owns one worker task per busy room; the inbox row is the unit of work."""

    def __init__(
        self,
        store: Store,
        handle: Handle,
        *,
        clock: Clock,
        concurrency: int = 8,
        room_queue_cap: int = 20,
        on_failure: Notify | None = None,
        on_overflow: Notify | None = None,
    ) -> None:
        self._store = store
        self._handle = handle
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._cap = room_queue_cap
        self._on_failure = on_failure
        self._on_overflow = on_overflow
        self._queues: dict[str, collections.deque[InboxItem]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._busy_noticed: dict[str, float] = {}
        self._dropped: dict[str, int] = {}
        self._overflowed: list[int] = []
        self._peak_queue = 0
        self._accepting = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        """Resume everything a previous process accepted but did not finish."""
        self._accepting = True
        resumed = await self._store.open_events()
        for item in resumed:
            if item.attempts >= MAX_ATTEMPTS:
                log.error("dispatch.given_up", event_id=item.id, room=item.room)
                await self._store.finish_event(item.id, "failed", "interrupted too often")
                # The process may have died for another reason each time (R09): never
                # drop an accepted message silently; the sender gets the apology.
                self._fire(self._notify(self._on_failure, item))
                continue
            self._enqueue(item)
        if resumed:
            log.info("dispatch.resumed", events=len(resumed))

    def submit(self, item: InboxItem) -> None:
        if not self._accepting:
            # Stored already; the next start resumes it.
            return
        queue = self._queues.get(item.room)
        if queue is not None and len(queue) >= self._cap:
            self._overflow(item)
            return
        self._enqueue(item)

    @property
    def room_queue_cap(self) -> int:
        return self._cap

    @property
    def peak_room_queue(self) -> int:
        """The longest any room's queue has been: never above the cap (R07)."""
        return self._peak_queue

    @property
    def backlog(self) -> int:
        return sum(len(q) for q in self._queues.values()) + len(self._workers)

    async def wait_idle(self) -> None:
        """Until every queued event has been handled (tests and shutdown)."""
        await self._idle.wait()

    async def stop(self, deadline_s: float) -> None:
        """Take no new work; let running turns finish within the deadline, then cancel."""
        self._accepting = False
        for queue in self._queues.values():
            queue.clear()  # still pending in the store; resumed on the next start
        workers = list(self._workers.values())
        if not workers:
            return
        _done, pending = await asyncio.wait(workers, timeout=deadline_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("dispatch.cancelled_on_stop", turns=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    def _enqueue(self, item: InboxItem) -> None:
        queue = self._queues.setdefault(item.room, collections.deque())
        queue.append(item)
        self._peak_queue = max(self._peak_queue, len(queue))
        self._idle.clear()
        if item.room not in self._workers:
            task = asyncio.create_task(self._work(item.room), name=f"room-{item.room}")
            self._workers[item.room] = task
            task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("dispatch.worker_crashed", error=repr(exc))

    async def _work(self, room: str) -> None:
        queue = self._queues[room]
        try:
            while queue and self._accepting:
                item = queue.popleft()
                async with self._slots:
                    if not self._accepting:
                        break  # stopped while waiting: still pending, resumed on next start
                    await self._run(item)
        finally:
            self._workers.pop(room, None)
            if not queue:
                self._queues.pop(room, None)
            if not self._workers:
                self._idle.set()

    async def _run(self, item: InboxItem) -> None:
        await self._store.start_event(item.id)
        crash_point("turn_started")
        structlog.contextvars.bind_contextvars(room=item.room, event_id=item.id)
        try:
            await self._handle(item)
        except asyncio.CancelledError:
            raise  # left 'running' in the store: resumed on the next start
        except Exception:
            log.exception("dispatch.handler_failed", kind=item.kind)
            await self._store.finish_event(item.id, "failed", "handler error")
            await self._notify(self._on_failure, item)
        else:
            crash_point("before_event_done")
            await self._store.finish_event(item.id)
        finally:
            structlog.contextvars.unbind_contextvars("room", "event_id")

    def _overflow(self, item: InboxItem) -> None:
        self._overflowed.append(item.id)
        if len(self._overflowed) == 1:  # the first of this tick: one commit for them all
            self._fire(self._drop_overflowed())
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

    async def _drop_overflowed(self) -> None:
        await asyncio.sleep(0)  # let the rest of this tick's overflow join the batch
        ids, self._overflowed = self._overflowed, []
        await self._store.drop_events(ids, "room queue full")

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
