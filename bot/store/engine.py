"""The store's engine: one worker thread per database connection, group commit, health.

Both backends (bot/store/sqlite.py, bot/store/postgres.py) are a ``Driver``: a blocking
connection and what its errors mean. The engine runs every call of it on one worker
thread, so the event loop only ever awaits (H04); the writes queued in one loop tick
share one transaction, and the reads asked for in one tick share one trip to the thread
(each trip costs both threads a wake-up; #19). A write that meets a store that cannot
commit now (locked, full, down, connection lost) waits on the loop and is tried again;
only the probe declares the store healthy again.

The aggregates (inbox, rooms, ...) write their SQL against ``Tx``: ``?`` placeholders
and rows as dicts, whatever the backend; where the dialects differ they pick by
``tx.dialect``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol, TypeVar, cast

import structlog

from bot.clock import Clock
from bot.errors import StoreError, StoreUnavailableError
from bot.store.records import StoreHealth

log = structlog.get_logger(__name__)

T = TypeVar("T")

Dialect = Literal["sqlite", "postgres"]
Row = dict[str, Any]

# Between two attempts of queued writes while the store cannot commit (waited on the loop).
RETRY_INTERVAL_S = 0.25
# While the store is down: how often the probe tries a commit.
PROBE_INTERVAL_S = 0.5
# A write with a budget, once the store is known down, waits this long for its one attempt.
LAST_ATTEMPT_S = 0.5
# Past its deadline a budgeted write still waits this long for an attempt under way: one
# that fails refuses it with the store's own reason; only a hung one runs into this.
HUNG_AFTER_S = 0.5


class Conflict(StoreError):
    """A write broke a uniqueness rule (a key that is already there)."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Row]: ...

    def fetchone(self) -> Row | None: ...


class Tx(Protocol):
    """One transaction on the worker thread, as the aggregates' SQL sees it."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement; Conflict when it breaks a uniqueness rule."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def savepoint(self) -> contextlib.AbstractContextManager[None]:
        """All of the block's statements or none of them, inside the transaction."""
        ...


Work = Callable[[Tx], T]
HealthWatcher = Callable[[StoreHealth], None]


class Driver(Protocol):
    """A blocking database connection; every method runs on the engine's worker thread."""

    @property
    def location(self) -> str:
        """Where the store is, for messages (a path, or a URL without its password)."""
        ...

    def transaction(self, work: Work[T]) -> T:
        """Run ``work`` in one transaction and commit; roll back if it raises."""
        ...

    def read(self, sql: str, params: Sequence[Any]) -> list[Row]: ...

    def probe(self) -> None:
        """A commit that needs fresh space and leaves nothing behind."""
        ...

    def is_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` came from the database (not from a bug in our code)."""
        ...

    def unavailable(self, exc: BaseException) -> bool:
        """Whether a database error means "not now" rather than "this write is wrong"."""
        ...

    def transient(self, exc: BaseException) -> bool:
        """Whether it lost a race with another writer (a deadlock, a serialization
        failure): tried again at once, and the store is not unhealthy for it."""
        ...

    def close(self) -> None: ...


@dataclass
class _Write:
    """One write waiting for its group commit."""

    work: Work[Any]
    done: asyncio.Future[Any]
    deadline: float | None  # loop time after which it is refused; None: waits for the store


@dataclass
class _Read:
    """One read waiting for its trip to the worker."""

    sql: str
    params: tuple[Any, ...]
    done: asyncio.Future[Any]


@dataclass(frozen=True)
class _Failed:
    """The outcome of one write of a batch that failed on its own (the rest commits)."""

    error: BaseException


class _WorkFailed(Exception):
    """Raised out of a transaction so it rolls back; the batch runs again without it."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index)
        self.index = index
        self.error = error


class Engine:
    """Runs a driver on its own thread: reads, group-committed writes, health and probe."""

    def __init__(self, driver: Driver, clock: Clock) -> None:
        self._driver = driver
        self._clock = clock
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="talkbot-store")
        self._batch: list[_Write] = []
        self._reads: list[_Read] = []
        self._flusher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._health = StoreHealth(ok=True, since=clock.now())
        self._watchers: list[HealthWatcher] = []
        self._closed = False

    @property
    def driver(self) -> Driver:
        return self._driver

    @property
    def health(self) -> StoreHealth:
        return self._health

    def watch_health(self, watcher: HealthWatcher) -> None:
        """Call ``watcher`` on the loop each time the store stops or starts committing."""
        self._watchers.append(watcher)

    async def close(self) -> None:
        """Stop retrying, refuse what still waits, close the connection; twice is fine."""
        if self._closed:
            return
        self._closed = True
        for task in (self._prober, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        _refuse(self._batch, StoreUnavailableError, "the store is closed")
        self._batch = []
        await asyncio.get_running_loop().run_in_executor(self._worker, self._driver.close)
        self._worker.shutdown(wait=False)

    async def on_worker(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, call)

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of one query, run on the worker with the other reads of this loop tick."""
        loop = asyncio.get_running_loop()
        entry = _Read(sql, tuple(params), loop.create_future())
        self._reads.append(entry)
        if len(self._reads) == 1:
            loop.call_soon(self._hand_over_reads)
        outcome = await entry.done
        if isinstance(outcome, _Failed):
            exc = outcome.error
            if not self._driver.is_error(exc):
                raise exc
            raise StoreError(f"cannot read the store: {exc}") from exc
        return cast("list[Row]", outcome)

    def _hand_over_reads(self) -> None:
        reads, self._reads = self._reads, []
        if self._closed:
            for entry in reads:
                if not entry.done.done():
                    entry.done.set_exception(StoreUnavailableError("the store is closed"))
            return
        queries = [(entry.sql, entry.params) for entry in reads if not entry.done.done()]
        if not queries:
            return
        trip = asyncio.get_running_loop().run_in_executor(
            self._worker, _run_reads, self._driver, queries
        )
        trip.add_done_callback(partial(_resolve_reads, [e for e in reads if not e.done.done()]))

    async def read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.read(sql, params)
        return rows[0] if rows else None

    async def apply(self, work: Work[T], *, budget_s: float | None = None) -> T:
        """Run ``work`` on the worker inside the next group commit; return once committed.

        While the store cannot commit, the write is tried again every RETRY_INTERVAL_S:
        without a budget until it commits (or its caller is cancelled); with one, until
        the budget is spent (none once the store is known down), then StoreUnavailableError.
        """
        loop = asyncio.get_running_loop()
        deadline = None
        if budget_s is not None:
            deadline = loop.time() + (budget_s if self._health.ok else 0.0)
        entry = _Write(work, loop.create_future(), deadline)
        self._batch.append(entry)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="store-commit")
        if deadline is None:
            return cast("T", await entry.done)
        wait_s = max(deadline - loop.time(), LAST_ATTEMPT_S) + HUNG_AFTER_S
        # A timer, not wait_for: no task and no shield per webhook (#19).
        timer = loop.call_later(wait_s, self._give_up, entry, wait_s)
        try:
            return cast("T", await entry.done)
        finally:
            timer.cancel()

    def _give_up(self, entry: _Write, waited_s: float) -> None:
        """A budgeted write whose commit did not come back in time (a hung disk or
        database server): refused, and the store is unhealthy until the probe commits.
        Still queued, it is taken out; already in a commit, that commit may still go
        through (the dispatcher's sweep then takes up the stored event)."""
        if entry.done.done():
            return
        if entry in self._batch:
            self._batch.remove(entry)
        reason = f"no commit within {waited_s:.1f} s"
        self._set_health(ok=False, reason=reason)
        entry.done.set_exception(StoreUnavailableError(f"the store cannot save now: {reason}"))

    async def change(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in the group commit; how many rows it changed."""
        return await self.apply(lambda tx: tx.execute(sql, params).rowcount)

    async def _flush(self) -> None:
        """Commit what is queued, batch after batch; writes queued meanwhile join the next."""
        try:
            while self._batch:
                batch = [entry for entry in self._batch if not entry.done.done()]
                self._batch = []
                if batch:
                    await self._commit(batch)
        finally:
            self._flusher = None

    async def _commit(self, batch: list[_Write]) -> None:
        run = partial(_run_batch, self._driver, [entry.work for entry in batch])
        try:
            results = await self.on_worker(run)
        except asyncio.CancelledError:
            _refuse(batch, StoreUnavailableError, "the store is closed")
            raise
        except Exception as exc:
            if not self._driver.is_error(exc):
                raise
            if not self._driver.unavailable(exc):
                _refuse(batch, StoreError, f"cannot write to the store: {exc}")
                return
            if self._driver.transient(exc):
                log.info("store.conflict_retried", reason=" ".join(str(exc).split()))
                self._requeue(batch, exc)
                return
            self._set_health(ok=False, reason=str(exc).strip())
            self._requeue(batch, exc)
            await asyncio.sleep(RETRY_INTERVAL_S)
            return
        for entry, result in zip(batch, results, strict=True):
            if entry.done.done():
                continue
            if isinstance(result, _Failed):
                entry.done.set_exception(result.error)
            else:
                entry.done.set_result(result)

    def _requeue(self, batch: list[_Write], exc: Exception) -> None:
        """Writes out of budget are refused; the others go first in the next batch."""
        now = asyncio.get_running_loop().time()
        late = [e.deadline is not None and now >= e.deadline for e in batch]
        refused = [entry for entry, out in zip(batch, late, strict=True) if out]
        reason = str(exc).strip()
        _refuse(refused, StoreUnavailableError, f"the store cannot save now: {reason}")
        self._batch[:0] = [entry for entry, out in zip(batch, late, strict=True) if not out]

    def _set_health(self, *, ok: bool, reason: str = "") -> None:
        if ok == self._health.ok:
            return
        was = self._health
        self._health = StoreHealth(ok=ok, since=self._clock.now(), reason=reason)
        if ok:
            log.warning("store.recovered", down_s=round(self._health.since - was.since, 3))
        else:
            log.error("store.unavailable", reason=reason)
            if self._prober is None:
                self._prober = asyncio.create_task(self._probe_until_healthy(), name="store-probe")
        for watcher in self._watchers:
            try:
                watcher(self._health)
            except Exception:  # a watcher's bug must not stop the commits
                log.exception("store.health_watcher_failed")

    async def _probe_until_healthy(self) -> None:
        """While the store is down, try a commit that needs fresh space now and then.

        Only this probe declares the store healthy again: a small write that fits a
        nearly full disk commits, yet the store is not back until the probe's does.
        """
        try:
            while not self._health.ok:
                await asyncio.sleep(PROBE_INTERVAL_S)
                try:
                    await self.on_worker(self._driver.probe)
                except Exception as exc:
                    if not self._driver.is_error(exc):
                        log.exception("store.probe_failed")
                    continue
                self._set_health(ok=True)
        finally:
            self._prober = None


def _run_batch(driver: Driver, works: Sequence[Work[Any]]) -> list[Any]:
    """On the worker: one transaction for all ``works``. A work failing on its own gets a
    _Failed outcome and the batch runs again without it (the others commit); a store that
    cannot commit fails them all."""
    failed: dict[int, _Failed] = {}
    while True:
        try:
            return driver.transaction(partial(_run_all, driver, works, failed))
        except _WorkFailed as exc:
            failed[exc.index] = _Failed(exc.error)


def _run_all(
    driver: Driver, works: Sequence[Work[Any]], failed: dict[int, _Failed], tx: Tx
) -> list[Any]:
    results: list[Any] = []
    for index, work in enumerate(works):
        if index in failed:
            results.append(failed[index])
            continue
        try:
            results.append(work(tx))
        except Exception as exc:
            if isinstance(exc, StoreError):
                raise _WorkFailed(index, exc) from exc
            if driver.is_error(exc):
                if driver.unavailable(exc):
                    raise
                raise _WorkFailed(index, StoreError(f"cannot write to the store: {exc}")) from exc
            # A bug in one write fails that write, not its batch.
            raise _WorkFailed(index, exc) from exc
    return results


def _run_reads(driver: Driver, queries: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    """On the worker: each query's rows, or a _Failed with what it raised (on its own)."""
    outcomes: list[Any] = []
    for sql, params in queries:
        try:
            outcomes.append(driver.read(sql, params))
        except Exception as exc:  # handed to that read's caller
            outcomes.append(_Failed(exc))
    return outcomes


def _resolve_reads(reads: Sequence[_Read], trip: asyncio.Future[list[Any]]) -> None:
    if trip.cancelled():
        outcomes: list[Any] = [_Failed(StoreUnavailableError("the store is closed")) for _ in reads]
    elif (error := trip.exception()) is not None:  # each caller its own (tracebacks)
        outcomes = [_Failed(StoreError(f"cannot read the store: {error}")) for _ in reads]
    else:
        outcomes = trip.result()
    for entry, outcome in zip(reads, outcomes, strict=True):
        if not entry.done.done():
            entry.done.set_result(outcome)


def _refuse(entries: Sequence[_Write], error: type[StoreError], message: str) -> None:
    """Each waiting caller gets its own exception (a shared one would mix tracebacks)."""
    for entry in entries:
        if not entry.done.done():
            entry.done.set_exception(error(message))
