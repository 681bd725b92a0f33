"""Replica chaos, the long run: replicas on one PostgreSQL behind nginx, killed at random
for minutes, then a rolling restart (#15; tests/test_replica_chaos.py is the short one).

    .venv/bin/python -m bench.replica_chaos [--kills 40] [--rooms 40] [--replicas 3]
        [--lease S] [--gap 1 4] [--down 0.2 2] [--pace 1 3] [--latency 0.1]
        [--rolling 2] [--seed N] [--keep DIR]

The rig is the test's (tests/test_replica_chaos.py): N `talkbot serve` processes, each on
its own loopback port, share a PostgreSQL database (started here, tests/pgserver.py);
nginx, started here in the foreground, passes each webhook to one of them and, when that
one cannot answer, to the next. Rooms send their messages one after the other (the next
once the previous got its 200), the admin asks for a confirmed tool and says yes, and a
config job fires every second. Phase 1 kills a random replica with SIGKILL every --gap
seconds and starts it again after --down seconds (one down at a time), --kills times.
Phase 2, on a fresh database, restarts each replica in turn with SIGTERM, --rolling
rounds, while the traffic flows.

Prints for each phase: webhooks posted, acknowledged and refused (by status, or cut),
ack latency, answers (repeats that R05 allows, any violation of the invariants the test
asserts), the time from a message's 200 to its answer (p50, p99, max), the same for the
messages in flight at a kill (acknowledged before it, answered after it), the confirmed
tool's runs and the job's fire times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from bench import rig
from tests.pgserver import PostgresServer
from tests.test_replica_chaos import (
    LEASE_S,
    NGINX,
    Disruption,
    ReplicaRig,
    kill_at_random,
    read_pg_store,
    reconcile,
    replica_rig,
    rolling_restart,
    run_traffic,
)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def spread(values: list[float]) -> str:
    return (
        f"p50 {1000 * percentile(values, 50):.0f} ms, p99 {1000 * percentile(values, 99):.0f} ms,"
        f" max {1000 * max(values, default=float('nan')):.0f} ms"
    )


def answer_times(replicas: ReplicaRig) -> dict[int, float]:
    """Each acknowledged message: from its 200 to its first answer (time.time() both)."""
    first: dict[int, float] = {}
    for m in replicas.talk.messages:
        if m.reply_to is not None and m.reply_to not in first:
            first[m.reply_to] = m.at
    return {i: first[i] - at for i, at in replicas.acked_at.items() if i in first}


def after_kills(replicas: ReplicaRig) -> list[float]:
    """The messages in flight at a kill (200 before it, answer after it): from the kill to
    the answer. What a kill costs the rooms it strands: the lease, a sweep, the turns."""
    answered = {m.reply_to: m.at for m in reversed(replicas.talk.messages) if m.reply_to}
    waits = []
    for killed_at, _replica in replicas.kills:
        for i, acked in replicas.acked_at.items():
            if acked <= killed_at < answered.get(i, 0.0):
                waits.append(answered[i] - killed_at)
    return waits


def holders(database: str) -> Counter[str]:
    """How many rooms each replica holds now (its unexpired leases)."""
    with psycopg.connect(database, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT holder, count(*) FROM room_leases WHERE expires_at > %s GROUP BY holder",
            (time.time(),),
        ).fetchall()
    return Counter({holder: int(n) for holder, n in rows})


async def busiest(database: str, seen: list[int]) -> None:
    """Every second, the most rooms one replica holds (a room stays where it was taken)."""
    while True:
        with contextlib.suppress(psycopg.Error):
            held = await asyncio.to_thread(holders, database)
            seen.append(max(held.values(), default=0))
        await asyncio.sleep(1.0)


async def phase(
    name: str,
    args: argparse.Namespace,
    where: Path,
    database: str,
    make: Callable[[ReplicaRig, random.Random], Disruption],
    *,
    repeats_allowed: bool,
) -> None:
    rng = random.Random(args.seed)  # noqa: S311 - not crypto
    async with replica_rig(
        where, database, count=args.replicas, lease_s=args.lease, latency_s=args.latency
    ) as replicas:
        started = time.monotonic()
        violation = ""
        most: list[int] = []
        sampler = asyncio.create_task(busiest(database, most))
        try:
            load = await run_traffic(
                replicas,
                rng,
                make(replicas, rng),
                rooms=args.rooms,
                pace_s=tuple(args.pace),
                drain_timeout_s=max(60.0, 10 * args.lease),
            )
            seconds = time.monotonic() - started
            figures = reconcile(replicas, load, repeats_allowed=repeats_allowed)
        except AssertionError as exc:
            seconds = time.monotonic() - started
            violation, figures = str(exc).splitlines()[0], {}
        finally:
            sampler.cancel()
        statuses = Counter(status for status, _ in read_pg_store(database).inbox.values())
        refused = dict(replicas.statuses)
        refused.pop(200, None)
        times = list(answer_times(replicas).values())
        stranded = after_kills(replicas)
    print(f"\n{name}: {seconds:.0f} s, {replicas.lives} process lives, seed {args.seed}")
    print(
        f"  webhooks posted {sum(replicas.statuses.values()) + replicas.post_errors}, "
        f"acknowledged {len(replicas.accepted)}, refused {refused or 0}, "
        f"cut {replicas.post_errors}"
    )
    print(f"  ack latency through nginx: {spread(replicas.ack_s)}")
    print(
        f"  answered {len(times)}/{len(replicas.accepted)}, repeated (R05) "
        f"{figures.get('answers_repeated_r05', '?')}, given up "
        f"{figures.get('events_given_up', '?')}"
    )
    print(f"  inbox at the end: {dict(statuses)}")
    print(f"  time from the 200 to the answer: {spread(times)}")
    print(
        f"  rooms held by the busiest replica, sampled each second: median "
        f"{percentile([float(n) for n in most], 50):.0f}, max {max(most, default=0)} "
        f"of {args.rooms + 1} (the chat rooms and the tool's)"
    )
    if replicas.kills:
        print(
            f"  {len(replicas.kills)} kills stranded {len(stranded)} messages; "
            f"from the kill to their answer: {spread(stranded)}"
        )
    print(
        f"  tool: {figures.get('tool_yes', '?')} yes, {figures.get('tool_runs', '?')} runs, "
        f"{figures.get('tool_runs_interrupted', '?')} interrupted; fire times: "
        f"{figures.get('fire_times_claimed', '?')} claimed, "
        f"{figures.get('fire_times_delivered', '?')} delivered, "
        f"{figures.get('fire_times_lost', '?')} lost"
    )
    print(
        f"  what nginx's tries got (502: a replica down): {dict(replicas.tries())}; replica"
        f" log lines above info: {dict(replicas.log_problems()) or 'none'}"
    )
    print(f"  invariants: {'VIOLATED: ' + violation if violation else 'all held'}")


@contextlib.contextmanager
def place(keep: str | None) -> Iterator[Path]:
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="talkbot-replica-chaos-") as name:
        yield Path(name)


async def run(args: argparse.Namespace) -> None:
    if NGINX is None:
        raise SystemExit("nginx is not installed (Debian: apt-get install nginx)")
    print(f"machine: {rig.machine()}")
    print(
        f"{args.replicas} replicas behind nginx, lease_s {args.lease:g}, {args.rooms} rooms "
        f"(pause {args.pace[0]:g}-{args.pace[1]:g} s after each 200), model "
        f"{args.latency:g} s per call; a config job every second; the admin's confirmed tool"
    )
    with PostgresServer() as server, place(args.keep) as where:
        print(f"server: PostgreSQL in {server.workdir} (fsync off), logs in {where}")
        await phase(
            f"phase 1: {args.kills} kills -9, every {args.gap[0]:g}-{args.gap[1]:g} s, "
            f"down {args.down[0]:g}-{args.down[1]:g} s",
            args,
            where / "kills",
            server.create_database("kills"),
            lambda r, rng: kill_at_random(r, rng, args.kills, tuple(args.gap), tuple(args.down)),
            repeats_allowed=True,
        )
        await phase(
            f"phase 2: rolling restart (SIGTERM), {args.rolling} rounds",
            args,
            where / "rolling",
            server.create_database("rolling"),
            lambda r, rng: rolling_restart(r, rng, args.rolling),
            repeats_allowed=False,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--lease", type=float, default=LEASE_S, help="[storage] lease_s")
    parser.add_argument("--gap", type=float, nargs=2, default=[1.0, 4.0], help="s before a kill")
    parser.add_argument("--down", type=float, nargs=2, default=[0.2, 2.0], help="s down")
    parser.add_argument("--pace", type=float, nargs=2, default=[1.0, 3.0], help="s between")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per model call")
    parser.add_argument("--rolling", type=int, default=2, help="rounds of rolling restarts")
    parser.add_argument("--seed", type=int, default=random.randrange(2**32))  # noqa: S311
    parser.add_argument("--keep", help="a directory for the logs, kept (default: removed)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
