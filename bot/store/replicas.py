"""Replicas sharing one store: who is alive, which replica serves which room, and the
revisions that tell the others a shared setting changed (#15).

A room's lease is a row with its holder and an expiry; the holder renews all its leases
with each heartbeat, so they expire only when it stops or loses the database. Times are
each replica's clock: keep the hosts' clocks in sync (NTP), the lease covers seconds of
skew, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.aggregate import Aggregate
from bot.store.engine import Tx

# A replica not seen for a day is forgotten (its leases expired long before).
FORGET_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class ReplicaRecord:
    id: str
    host: str
    pid: int
    version: str
    started_at: float
    seen_at: float


class Replicas(Aggregate):
    async def heartbeat(self, replica: ReplicaRecord, lease_s: float) -> None:
        """Say ``replica`` is alive now and renew every room lease it holds."""
        now = self._clock.now()

        def beat(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO replicas (id, host, pid, version, started_at, seen_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " seen_at = excluded.seen_at",
                (replica.id, replica.host, replica.pid, replica.version, replica.started_at, now),
            )
            tx.execute(
                "UPDATE room_leases SET expires_at = ? WHERE holder = ?",
                (now + lease_s, replica.id),
            )
            # Replicas that died long ago (a crash leaves its row): !status forgets them.
            tx.execute("DELETE FROM replicas WHERE seen_at < ?", (now - FORGET_AFTER_S,))

        await self._engine.apply(beat)

    async def leave(self, replica_id: str) -> None:
        """A replica stopping cleanly: its rooms are free for the others at once."""

        def go(tx: Tx) -> None:
            tx.execute("DELETE FROM room_leases WHERE holder = ?", (replica_id,))
            tx.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))

        await self._engine.apply(go)

    async def list_replicas(self) -> list[ReplicaRecord]:
        """Every replica that said it was alive, most recently seen first."""
        rows = await self._engine.read(
            "SELECT id, host, pid, version, started_at, seen_at FROM replicas"
            " ORDER BY seen_at DESC, id"
        )
        return [ReplicaRecord(**row) for row in rows]

    async def claim_room(self, room: str, holder: str, lease_s: float) -> bool:
        """Take or keep the room's lease; False while another replica's is unexpired.

        It looks before it writes: a claim that fails locks no row, so replicas asking
        for a room another one holds never queue behind that one's heartbeat.
        """
        now = self._clock.now()

        def claim(tx: Tx) -> bool:
            found = tx.execute(
                "SELECT holder, expires_at FROM room_leases WHERE room = ?", (room,)
            ).fetchall()
            if found and found[0]["holder"] != holder and found[0]["expires_at"] >= now:
                return False
            return (
                tx.execute(
                    "INSERT INTO room_leases (room, holder, expires_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (room) DO UPDATE SET holder = excluded.holder,"
                    " expires_at = excluded.expires_at"
                    " WHERE room_leases.holder = excluded.holder"
                    " OR room_leases.expires_at < ?",
                    (room, holder, now + lease_s, now),
                ).rowcount
                == 1
            )

        return await self._engine.apply(claim)

    async def room_holders(self) -> dict[str, tuple[str, float]]:
        """Each leased room: its holder and when the lease runs out."""
        rows = await self._engine.read("SELECT room, holder, expires_at FROM room_leases")
        return {row["room"]: (row["holder"], row["expires_at"]) for row in rows}

    async def rooms_with_work(self) -> dict[str, tuple[str, float] | None]:
        """Each room with accepted work not finished: its lease (holder, expiry), if any."""
        rows = await self._engine.read(
            "SELECT DISTINCT inbox.room AS room, room_leases.holder AS holder,"
            " room_leases.expires_at AS expires_at FROM inbox"
            " LEFT JOIN room_leases ON room_leases.room = inbox.room"
            " WHERE inbox.status IN ('pending', 'running')"
        )
        return {
            row["room"]: None if row["holder"] is None else (row["holder"], row["expires_at"])
            for row in rows
        }

    async def rooms_to_serve(self, holder: str) -> list[str]:
        """Rooms with accepted work not finished whose lease is ``holder``'s, free or
        expired: what this replica should take up."""
        rows = await self._engine.read(
            "SELECT DISTINCT inbox.room AS room FROM inbox"
            " LEFT JOIN room_leases ON room_leases.room = inbox.room"
            " WHERE inbox.status IN ('pending', 'running') AND (room_leases.room IS NULL"
            " OR room_leases.holder = ? OR room_leases.expires_at < ?) ORDER BY inbox.room",
            (holder, self._clock.now()),
        )
        return [row["room"] for row in rows]

    async def revisions(self) -> dict[str, int]:
        """Each shared setting's revision: roles, jobs, config."""
        rows = await self._engine.read("SELECT topic, revision FROM revisions")
        return {row["topic"]: int(row["revision"]) for row in rows}

    async def bump_revision(self, topic: str) -> None:
        """Tell the other replicas to reload ``topic`` (``!reload`` does, for config)."""
        await self._engine.apply(lambda tx: bump(tx, topic))


def bump(tx: Tx, topic: str) -> None:
    """Raise ``topic``'s revision inside the transaction that changed it."""
    tx.execute(
        "INSERT INTO revisions (topic, revision) VALUES (?, 1)"
        " ON CONFLICT (topic) DO UPDATE SET revision = revisions.revision + 1",
        (topic,),
    )
