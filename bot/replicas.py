"""Replicas: which rooms this process serves, who else is alive, what changed elsewhere.

On SQLite there is one process (the store's lock file sees to it): it serves every room
and nothing here touches the store. On PostgreSQL several replicas share the inbox, and
any of them may receive any webhook (#15):

- A room's turns run on the replica holding the room's lease, one at a time and in
  order. A replica takes up a room when it receives a webhook for it or finds accepted
  work in it, if the lease is free, expired or already its own; the holder renews its
  leases with each heartbeat, so they expire ``[storage] lease_s`` (15 s) after it dies or
  loses the database,
  and another replica then resumes the room's accepted work (as a restart would).
- A replica stops serving a room whose lease it could not renew in time: the next holder
  may already be at work.
- A change made through one replica to what each keeps in memory (roles set with
  ``!role``, jobs, the config after ``!reload``) raises a revision in the store; the
  others see it within REVISION_CHECK_S and reload.
- Work a dead replica had approved or started (confirmations, job runs) is failed as
  interrupted, never run again (A10), by whichever replica notices first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from bot.clock import Clock
from bot.errors import StoreError
from bot.store import ReplicaRecord, Store

log = structlog.get_logger(__name__)

# The default of [storage] lease_s: how long a dead replica's rooms wait for another.
LEASE_S = 15.0
# A replica says it is alive (and renews its leases) this many times per lease.
BEATS_PER_LEASE = 5
# How often a replica looks for rooms with accepted work it should take up.
SWEEP_S = 0.5
# On SQLite, how often the one process looks for accepted events nobody took in: a
# webhook answered 503 after its commit hung, whose commit went through afterwards.
ORPHAN_SWEEP_S = 5.0
REVISION_CHECK_S = 1.0

Sweep = Callable[[], Awaitable[None]]
Reload = Callable[[str], Awaitable[None]]
Recover = Callable[[list[str]], Awaitable[None]]


def new_replica(clock: Clock, version: str) -> ReplicaRecord:
    """This process, as the others see it: host, pid and a random part (pids are reused)."""
    host = socket.gethostname()
    pid = os.getpid()
    now = clock.now()
    return ReplicaRecord(f"{host}-{pid}-{secrets.token_hex(3)}", host, pid, version, now, now)


@dataclass(frozen=True)
class Duties:
    """What the replica loop calls: take up rooms, reload a topic, fail a dead one's work."""

    sweep: Sweep
    reload: Reload
    recover: Recover


class Coordinator:
    """This replica's leases and heartbeat; on SQLite (``shared`` False) it serves all."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        me: ReplicaRecord,
        *,
        shared: bool,
        lease_s: float = LEASE_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self.me = me
        self.shared = shared
        self.lease_s = lease_s
        # A replica not seen for a lease is gone: its rooms, confirmations, runs are free.
        self._heartbeat_s = lease_s / BEATS_PER_LEASE
        self._held: dict[str, float] = {}  # room -> monotonic time its lease is good until
        self._revisions: dict[str, int] = {}
        self._alive_count = 1  # replicas seen alive at the last look (this one included)
        self._task: asyncio.Task[None] | None = None

    async def start(self, duties: Duties) -> None:
        """Say this replica is alive and keep saying it; on SQLite, only the sweep."""
        if not self.shared:
            self._task = asyncio.create_task(self._run(duties), name="orphans")
            return
        await self._beat()
        self._revisions = await self._store.revisions()
        await self.alive()  # the count the fair share divides by; recovery at start is the app's
        self._task = asyncio.create_task(self._run(duties), name="replica")

    async def stop(self) -> None:
        """Stop the loop and hand every room back at once (the others take them up)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.shared:
            self._held.clear()
            try:
                await self._store.leave(self.me.id)
            except StoreError as exc:  # the leases expire by themselves
                log.warning("replica.leave_failed", error=str(exc))

    async def close(self) -> None:
        """Close the leases' own store connection (with replicas; on SQLite it is the
        main store, closed by its owner)."""
        if self.shared:
            await self._store.close()

    # -- rooms -----------------------------------------------------------------------

    async def may_serve(self, room: str) -> bool:
        """Whether this replica serves ``room`` now, taking its lease if it can."""
        if not self.shared:
            return True
        if self.holds(room):
            return True
        asked = self._clock.monotonic()  # the lease runs from here, not from the answer
        try:
            claimed = await self._store.claim_room(room, self.me.id, self.lease_s)
        except StoreError:
            return False  # the store is down: whoever holds it keeps it
        if claimed:
            self._held[room] = asked + self.lease_s - self._heartbeat_s
            log.info("replica.room_taken", room=room)
        return claimed

    def holds(self, room: str) -> bool:
        """Whether this replica's lease on ``room`` is surely still good (no store call)."""
        if not self.shared:
            return True
        return self._held.get(room, 0.0) > self._clock.monotonic()

    async def rooms_to_serve(self) -> list[str]:
        """Rooms with accepted work this replica should take up now (on SQLite: all).

        Its own rooms, and free or expired ones up to a fair share of all the rooms with
        work: the rooms of a replica that died spread over the survivors (each takes its
        share on its own sweep) instead of piling up on whichever swept first.
        """
        if not self.shared:
            return await self._store.rooms_to_serve(self.me.id)
        now = self._clock.now()
        rooms = await self._store.rooms_with_work()
        mine, free = [], []
        for room, lease in rooms.items():
            if lease is None or lease[1] < now:
                free.append(room)
            elif lease[0] == self.me.id:
                mine.append(room)
        random.shuffle(free)  # two replicas sweeping at once mostly want different rooms
        share = math.ceil(len(rooms) / max(1, self._alive_count))
        return sorted(mine) + free[: max(0, share - len(mine))]

    # -- who is alive ------------------------------------------------------------------

    async def replicas(self) -> list[ReplicaRecord]:
        """The replicas seen alive lately (this one first); on SQLite, this process."""
        if not self.shared:
            return [self.me]
        cutoff = self._clock.now() - self.lease_s
        seen = [r for r in await self._store.list_replicas() if r.seen_at >= cutoff]
        return sorted(seen, key=lambda r: (r.id != self.me.id, r.id))

    async def alive(self) -> list[str]:
        alive = [replica.id for replica in await self.replicas()]
        self._alive_count = len(alive)
        return alive

    # -- the loop ----------------------------------------------------------------------

    async def _run(self, duties: Duties) -> None:
        """Sweep for work now and then; with replicas also heartbeat, recover what a dead
        one left and check revisions (one process has nobody else to hear from)."""
        next_beat = next_revision = 0.0
        while True:
            await asyncio.sleep(SWEEP_S if self.shared else ORPHAN_SWEEP_S)
            now = self._clock.monotonic()
            try:
                if self.shared and now >= next_beat:
                    next_beat = now + self._heartbeat_s
                    await self._beat()
                    await duties.recover(await self.alive())
                if self.shared and now >= next_revision:
                    next_revision = now + REVISION_CHECK_S
                    await self._check_revisions(duties.reload)
                await duties.sweep()
            except StoreError as exc:
                log.warning("replica.store_failed", error=str(exc))
            except Exception:
                log.exception("replica.loop_failed")

    async def _beat(self) -> None:
        started = self._clock.monotonic()
        await self._store.heartbeat(self.me, self.lease_s)
        # Renewed from the moment the beat was sent: a slow commit shortens, never lengthens.
        # A lease already lapsed here may have been taken by another replica since: let go.
        good_until = started + self.lease_s - self._heartbeat_s
        self._held = {room: good_until for room, until in self._held.items() if until > started}

    async def _check_revisions(self, reload: Reload) -> None:
        current = await self._store.revisions()
        changed = sorted(
            topic for topic, rev in current.items() if self._revisions.get(topic) != rev
        )
        self._revisions = current
        for topic in changed:
            log.info("replica.reload", topic=topic)
            await reload(topic)
