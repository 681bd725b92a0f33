"""Scheduled jobs and their run ledger: each fire time is entered once, so it runs once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.store.aggregate import Aggregate
from bot.store.engine import Row, Tx
from bot.store.records import JobRecord, RunRecord
from bot.store.replicas import bump

_JOB = (
    "SELECT id, owner, room, kind, expr, timezone, message, prompt, created_by_role, paused,"
    " misfire, source, created_at, active_since, origin_room FROM jobs"
)
_RUN = "SELECT job_id, fire_time, status, started_at, finished_at, detail FROM job_runs"


class Jobs(Aggregate):
    async def save_job(self, job: JobRecord) -> None:
        """Insert or replace a job definition by id (other replicas re-arm their timers)."""
        await self._write_job(
            "INSERT INTO jobs (id, owner, room, kind, expr, timezone, message, prompt,"
            " created_by_role, paused, misfire, source, created_at, active_since, origin_room)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " owner = excluded.owner, room = excluded.room, kind = excluded.kind,"
            " expr = excluded.expr, timezone = excluded.timezone, message = excluded.message,"
            " prompt = excluded.prompt, created_by_role = excluded.created_by_role,"
            " paused = excluded.paused, misfire = excluded.misfire, source = excluded.source,"
            " created_at = excluded.created_at, active_since = excluded.active_since,"
            " origin_room = excluded.origin_room",
            (
                job.id,
                job.owner,
                job.room,
                job.kind,
                job.expr,
                job.timezone,
                job.message,
                job.prompt,
                job.created_by_role,
                int(job.paused),
                job.misfire,
                job.source,
                job.created_at,
                job.active_since,
                job.origin_room,
            ),
        )

    async def _write_job(self, sql: str, params: Sequence[Any]) -> int:
        def write(tx: Tx) -> int:
            changed = tx.execute(sql, params).rowcount
            if changed:
                bump(tx, "jobs")
            return changed

        return await self._engine.apply(write)

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = await self._engine.read_one(f"{_JOB} WHERE id = ?", (job_id,))
        return None if row is None else _job(row)

    async def list_jobs(
        self, *, owner: str | None = None, source: str | None = None, room: str | None = None
    ) -> list[JobRecord]:
        """Jobs ordered by id, optionally only one owner's, one source's or one room's."""
        wanted = {"owner": owner, "source": source, "room": room}
        where = [f"{column} = ?" for column, value in wanted.items() if value is not None]
        params: list[Any] = [value for value in wanted.values() if value is not None]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._engine.read(f"{_JOB}{clause} ORDER BY id", params)
        return [_job(row) for row in rows]

    async def delete_job(self, job_id: str) -> bool:
        """Remove a definition; its ledger rows stay, so a reused id never re-runs a fire time."""
        return await self._write_job("DELETE FROM jobs WHERE id = ?", (job_id,)) > 0

    async def claim_run(
        self, job_id: str, fire_time: int, *, status: str = "running", detail: str = ""
    ) -> bool:
        """Enter a fire time in the ledger; False when it is there already (never run twice,
        on any replica). The run is this replica's: it is "interrupted" only if it dies."""
        claimed = await self._engine.change(
            "INSERT INTO job_runs (job_id, fire_time, status, started_at, detail, runner)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (job_id, fire_time, status, self._clock.now(), detail, self._replica),
        )
        return claimed > 0

    async def finish_run(self, job_id: str, fire_time: int, status: str, detail: str = "") -> None:
        await self._engine.change(
            "UPDATE job_runs SET status = ?, finished_at = ?, detail = ?"
            " WHERE job_id = ? AND fire_time = ?",
            (status, self._clock.now(), detail, job_id, fire_time),
        )

    async def last_run(self, job_id: str) -> RunRecord | None:
        """The ledger row with the latest fire time of a job."""
        row = await self._engine.read_one(
            f"{_RUN} WHERE job_id = ? ORDER BY fire_time DESC LIMIT 1", (job_id,)
        )
        return None if row is None else RunRecord(**row)

    async def job_runs(self, job_id: str, limit: int = 20) -> list[RunRecord]:
        """A job's most recent ledger rows, oldest first."""
        rows = await self._engine.read(
            f"{_RUN} WHERE job_id = ? ORDER BY fire_time DESC LIMIT ?", (job_id, limit)
        )
        return [RunRecord(**row) for row in reversed(rows)]

    async def interrupt_running_runs(self, alive: Sequence[str] = ()) -> int:
        """Runs left 'running' by a replica not in ``alive`` (a crash) are over, and never
        delivered again; this replica's own are never touched."""
        keep = [*alive, self._replica] if self._replica else [*alive]
        sql = "UPDATE job_runs SET status = 'interrupted', finished_at = ? WHERE status = 'running'"
        if keep:
            sql += f" AND runner NOT IN ({', '.join('?' for _ in keep)})"
        return await self._engine.change(sql, (self._clock.now(), *keep))

    async def prune_job_runs(self, older_than_s: float) -> int:
        """Drop old ledger rows, keeping each job's latest (the catch-up starts from it)."""
        cutoff = self._clock.now() - older_than_s
        return await self._engine.change(
            "DELETE FROM job_runs WHERE started_at < ? AND fire_time < ("
            " SELECT max(fire_time) FROM job_runs AS newer WHERE newer.job_id = job_runs.job_id)",
            (cutoff,),
        )


def _job(row: Row) -> JobRecord:
    return JobRecord(**{**row, "paused": bool(row["paused"])})
