"""Chaos with replicas: real `talkbot serve` processes on one PostgreSQL behind nginx (P10 P11).

Three replicas, each on its own loopback port with the same config but ``[server] port``,
share a database; nginx, started by the test in the foreground with a config of its own
in tmp_path, is the only address Talk knows. It spreads the webhooks over the replicas and
passes one that a replica could not answer (a refused connect, a connection cut by a
kill -9, a timeout, a 502 or 503) to the next one: ``proxy_next_upstream ...
non_idempotent``. Retrying a POST cannot store it twice: nginx passes the same body and
the same random, and both are unique in the shared inbox (P01), so a second delivery is a
duplicate that gets its 200 and nothing more.

The traffic: 20 rooms, each sending its messages one after the other (the next once the
previous got its 200), rooms in parallel; the admin's confirmed dangerous tool
(``chaos_mark``, tests/chaos_tools.py, the flow of test_chaos's ``Load.tools``) in
another room; a config job firing every second in a third. Then:

- P10: a random replica is killed with SIGKILL every second or two and started again a
  moment later, so two of the three are always up. Every acknowledged message is answered,
  once, except where R05 allows a repeat (the replica died between posting the answer
  and marking the event done: the store counts an attempt per copy, the copies share one
  referenceId, and a kill came within R05_WINDOW_S of the first copy); in each room the
  answers come in the order of the messages (a repeat right behind its first copy); no
  confirmed action runs twice or is left running (A10, P02); no fire time is delivered
  twice (R11, P03). No webhook is refused: nginx always has two live replicas to try.
- P11: a rolling restart, each replica in turn stopped with SIGTERM and started again
  while the traffic flows: every webhook gets its 200 through nginx, every message is
  answered exactly once and in order (a stop finishes its turns, so R05 has no window).

In both, no replica answers a webhook with anything but 200 (nginx's access log lists
each try: its next try would hide a 503, a webhook a replica could not store) and no
replica logs an error.

``CHAOS_SEED`` repeats a run's choices (not its timing); a failure names it and the
directory with each replica's log (``replicaN-life-M.log``) and nginx's logs (a line per
webhook with the replicas tried and their statuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from bot.config import StorageSettings
from bot.crashpoints import ENV as CRASH_ENV
from tests.chaos_tools import LEDGER_ENV
from tests.fakes.talk_server import FakeTalk, SentMessage
from tests.harness import API_KEY, SECRET, free_port, php_json, signed_headers
from tests.test_chaos import (
    CRASH_TIMEOUT_S,
    KILLED,
    OPEN_RUNS,
    POST_TIMEOUT_S,
    REPO_ROOT,
    ChaosModel,
    Load,
    Rig,
    StoreView,
    check_fire_times,
    check_tool_runs,
    message_id,
    store_view,
    until,
)
from tests.test_process import Process, spawn, wait_healthy, write_toml

log = logging.getLogger(__name__)

REPLICAS = 3
# [storage] lease_s, the least the config allows: a dead replica's rooms wait this long.
LEASE_S = min(
    float(m.ge) for m in StorageSettings.model_fields["lease_s"].metadata if hasattr(m, "ge")
)
ROOMS = 20
CHAT_ROOM_PREFIX = "chatroom"
MODEL_LATENCY_S = 0.1
# A room's pause between a 200 and its next message: ~20 messages/s in all, what one
# replica alone can answer ([llm] concurrency 4: ~35 turns/s), since a room stays with the
# replica that took it up and the rooms may all end up on one.
PACE_S = (0.5, 1.5)
SHORT_KILLS = 4
GAP_S = (0.8, 2.0)  # between a replica's restart (ready) and the next kill
DOWN_S = (0.2, 1.0)  # how long a killed replica stays down
PAUSE_S = (0.5, 1.0)  # a rolling restart: between one replica's return and the next stop
SETTLE_S = 1.0  # traffic goes on this long after the last restart
# A repeat (R05) comes from a replica killed between posting an answer and marking its
# event done: two commits (history, inbox) after the post, milliseconds unless loaded.
# The fake Talk may record the copy after the kill: it reads what the dead replica sent
# on this process's loop, behind the kill itself.
R05_WINDOW_S = 1.5
DRAIN_TIMEOUT_S = 30.0  # lease_s, a sweep and the turns queued meanwhile, with slack
# nginx's statuses for a try that got no answer: refused or cut (502), timed out (504).
NGINX_OWN = frozenset({"502", "504"})
# An event interrupted MAX_ATTEMPTS times is given up with an apology (R09): allowed.
ALLOWED_ERRORS = frozenset({"error dispatch.given_up"})
NGINX_START_TIMEOUT_S = 10.0
NGINX_STOP_TIMEOUT_S = 10.0


def nginx_binary() -> str | None:
    """nginx on PATH, or Debian's in /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


NGINX = nginx_binary()
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


# -- the reverse proxy -------------------------------------------------------------------


@dataclass
class Nginx:
    """nginx in the foreground, its config, pid, logs and temp files in ``workdir``."""

    workdir: Path
    upstreams: list[int]  # the replicas' ports
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        where = self.workdir
        # As root the master starts its workers as "nobody" unless told otherwise, and
        # nobody may not enter tmp_path; as anyone else the directive would be ignored.
        user = "user root;\n" if os.geteuid() == 0 else ""
        servers = "".join(f"        server 127.0.0.1:{p} max_fails=0;\n" for p in self.upstreams)
        temp = "".join(
            f"    {kind}_temp_path {where}/{kind}_temp;\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""{user}worker_processes 1;
pid {where}/nginx.pid;
error_log {where}/error.log notice;
events {{
    worker_connections 1024;
}}
http {{
    log_format tries '$msec $status $request_time up=$upstream_addr st=$upstream_status';
    access_log {where}/access.log tries;
{temp}
    # Every replica, always: a refused connect on loopback costs nothing, and a replica
    # back from a restart gets webhooks at once (max_fails=1 would rest it fail_timeout).
    upstream talkbot {{
{servers}    }}
    server {{
        listen 127.0.0.1:{self.port};
        client_max_body_size 1m;
        location = /webhook {{
            proxy_pass http://talkbot;
            # A POST is passed on too: stored once, whoever gets it (the random is unique).
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries 0;
            proxy_connect_timeout 1s;
            # A replica that is starting holds its port before it accepts: after this,
            # the next one gets the webhook (Talk gives up after 5 s).
            proxy_send_timeout 3s;
            proxy_read_timeout 3s;
        }}
    }}
}}
"""

    async def start(self) -> None:
        assert NGINX is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        with (self.workdir / "nginx.out").open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                NGINX,
                *("-p", str(self.workdir), "-c", str(conf), "-e", str(self.workdir / "error.log")),
                *("-g", "daemon off;"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its workers with it, away from pytest's Ctrl-C
            )
        await self._wait_listening()

    async def _wait_listening(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + NGINX_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"nginx exited: {self._tail()}")
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"nginx did not listen: {self._tail()}")

    def _tail(self) -> str:
        texts = []
        for name in ("nginx.out", "error.log"):
            with contextlib.suppress(OSError):
                texts.append((self.workdir / name).read_text(errors="replace")[-2000:])
        return "\n".join(texts)

    async def stop(self) -> None:
        """A fast shutdown (SIGTERM); its process group killed if it does not go."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), NGINX_STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


# -- the replicas ------------------------------------------------------------------------


@dataclass
class ReplicaRig(Rig):
    """test_chaos's rig, with ``count`` replicas on one database behind nginx.

    What goes in (``event``, ``tool_event``) and what comes out (``answers``, ``ticks``,
    ``ledger_lines``...) are the rig's own; ``start`` starts every replica that is down,
    ``kill`` and ``stop`` take a replica's index, ``post`` goes through nginx.
    """

    database: str = ""
    count: int = REPLICAS
    lease_s: float = LEASE_S
    replicas: list[Process | None] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)
    front: Nginx | None = None
    statuses: Counter[int] = field(default_factory=Counter)  # of every webhook posted
    post_errors: int = 0  # no status at all: a cut connection or POST_TIMEOUT_S
    ack_s: list[float] = field(default_factory=list)  # each 200's latency
    acked_at: dict[int, float] = field(default_factory=dict)  # message id -> time.time()
    kills: list[tuple[float, int]] = field(default_factory=list)  # (time.time(), replica)
    session: aiohttp.ClientSession | None = None
    start_failures: list[str] = field(default_factory=list)  # each a log's tail

    def __post_init__(self) -> None:
        super().__post_init__()  # the single daemon's config: the replicas' is the same
        (self.tmp_path / "files").mkdir(exist_ok=True)  # [tools.files] root, or a warning
        data = tomllib.loads(self.config.read_text())
        ports = []
        for n in range(self.count):
            config = copy.deepcopy(data)
            config["server"]["port"] = port = free_port()
            config["storage"] = {"url": self.database, "lease_s": self.lease_s}
            path = self.tmp_path / f"replica{n}.toml"
            write_toml(path, config)
            self.configs.append(path)
            self.replicas.append(None)
            ports.append(port)
        self.front = Nginx(self.tmp_path / "nginx", ports)

    # -- processes -------------------------------------------------------------------

    def running(self, n: int) -> bool:
        replica = self.replicas[n]
        return replica is not None and replica.proc.returncode is None

    @property
    def alive(self) -> bool:
        return any(self.running(n) for n in range(self.count))

    async def start(self, crash_at: str = "") -> bool:
        """Every replica that is down, started together; True once all are ready."""
        down = [n for n in range(self.count) if not self.running(n)]
        ready = await asyncio.gather(*(self._start_one(n, crash_at) for n in down))
        return all(ready)

    async def _start_one(self, n: int, crash_at: str) -> bool:
        self.lives += 1
        env = {CRASH_ENV: crash_at, LEDGER_ENV: str(self.ledger), "PYTHONPATH": str(REPO_ROOT)}
        log_file = self.tmp_path / f"replica{n}-life-{self.lives}.log"
        self.replicas[n] = replica = await spawn(self.configs[n], env=env, log=log_file)
        try:
            await wait_healthy(replica.url, replica.proc)
        except AssertionError:
            if replica.proc.returncode is None:
                raise
            self.exits.append(replica.proc.returncode)
            tail = log_file.read_text(errors="replace")[-1500:]
            self.start_failures.append(f"{log_file} exited {replica.proc.returncode}: {tail}")
            return False
        return True

    async def kill(self, n: int | None = None) -> None:
        """SIGKILL replica ``n`` (every one when None)."""
        for index in range(self.count) if n is None else [n]:
            if self.running(index):
                self.kills.append((time.time(), index))
                self.exits.append(await self._sigkill(index))

    async def _sigkill(self, n: int) -> int:
        replica = self.replicas[n]
        assert replica is not None
        replica.proc.send_signal(signal.SIGKILL)
        return await replica.proc.wait()

    async def stop(self, n: int | None = None) -> int:
        """SIGTERM replica ``n`` (every one when None), as systemd stops it: the exit code
        (the first that is not 0)."""
        indexes = [i for i in (range(self.count) if n is None else [n]) if self.running(i)]
        codes = await asyncio.gather(*(self._stop_one(i) for i in indexes))
        return next((code for code in codes if code != 0), 0)

    async def _stop_one(self, n: int) -> int:
        replica = self.replicas[n]
        assert replica is not None
        replica.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(replica.proc.wait(), CRASH_TIMEOUT_S)
        self.exits.append(code)
        return code

    async def close(self) -> None:
        """Whatever happened in the test, no process outlives it."""
        for n in range(self.count):
            if self.running(n):
                await self._sigkill(n)
        if self.front is not None:
            await self.front.stop()
        if self.session is not None:
            await self.session.close()

    # -- what goes in ----------------------------------------------------------------

    async def post(self, event: dict[str, Any]) -> bool:
        """Through nginx; True when it answered 200 (accepted)."""
        assert self.front is not None
        assert self.session is not None
        body = php_json(event)
        started = time.monotonic()
        try:
            async with (
                asyncio.timeout(POST_TIMEOUT_S),
                self.session.post(
                    f"{self.front.url}/webhook", data=body, headers=signed_headers(body)
                ) as resp,
            ):
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            self.post_errors += 1
            return False
        self.statuses[status] += 1
        if status == 200:
            self.accepted.add(message_id(event))
            self.acked_at[message_id(event)] = time.time()
            self.ack_s.append(time.monotonic() - started)
        return status == 200

    @property
    def refused(self) -> int:
        """Webhooks that did not get their 200: Talk would show the sender a failure."""
        return self.post_errors + sum(n for status, n in self.statuses.items() if status != 200)

    # -- what came out ---------------------------------------------------------------

    def tries(self) -> Counter[str]:
        """What each replica nginx tried gave it, from its access log: "502" is nginx's own
        for a refused or cut connection (a replica down), "504" for its timeout."""
        assert self.front is not None
        found: Counter[str] = Counter()
        with contextlib.suppress(FileNotFoundError):
            for line in (self.front.workdir / "access.log").read_text().splitlines():
                tried = line.partition(" st=")[2]
                found.update(t for t in re.split(r"[,:] ", tried) if t)
        return found

    def log_problems(self) -> Counter[str]:
        """The replicas' log lines above info, as "level event"."""
        found: Counter[str] = Counter()
        for path in self.tmp_path.glob("replica*-life-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    found["unparsed " + line[:60]] += 1  # a traceback on stderr
                    continue
                if record.get("level") not in ("debug", "info"):
                    found[f"{record.get('level')} {record.get('event')}"] += 1
        return found

    def replies(self) -> dict[int, list[SentMessage]]:
        """Every answer Talk got, by the message it answers, in the order they came."""
        found: dict[int, list[SentMessage]] = defaultdict(list)
        for m in self.talk.messages:
            if m.reply_to is not None:
                found[m.reply_to].append(m)
        return found

    def all_answered(self) -> bool:
        return self.accepted <= {m.reply_to for m in self.talk.messages}


def read_pg_store(url: str) -> StoreView:
    """test_chaos's view of the store, read from the replicas' PostgreSQL database."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:

        def query(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            return conn.execute(sql.replace("?", "%s").encode(), params).fetchall()

        return store_view(query)


@contextlib.asynccontextmanager
async def replica_rig(
    where: Path,
    database: str,
    *,
    count: int = REPLICAS,
    lease_s: float = LEASE_S,
    latency_s: float = MODEL_LATENCY_S,
) -> AsyncIterator[ReplicaRig]:
    """Fakes, ``count`` replicas (not started) and nginx (started); nothing outlives it."""
    model = ChaosModel(api_key=API_KEY)
    model.latency_s = latency_s
    async with FakeTalk(SECRET) as talk:
        await model.start()
        made = ReplicaRig(
            where, talk, model, every="1s", database=database, count=count, lease_s=lease_s
        )
        try:
            made.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True)
            )
            assert made.front is not None
            await made.front.start()
            yield made
        finally:
            await made.close()
            await model.close()


# -- the load and the disruptions ----------------------------------------------------------


def chat_rooms(count: int) -> list[tuple[str, str]]:
    """(room, sender): each room its own person, like test_chaos's CHAT_ROOMS."""
    return [(f"{CHAT_ROOM_PREFIX}{n:02d}", f"user{n:02d}") for n in range(1, count + 1)]


async def converse(
    rig: ReplicaRig,
    room: str,
    sender: str,
    rng: random.Random,
    stop: asyncio.Event,
    *,
    pace_s: tuple[float, float],
) -> None:
    """One room's messages, each sent once the previous one got its status from nginx."""
    said = itertools.count(1)
    await asyncio.sleep(rng.uniform(*pace_s))  # the rooms do not start in step
    while not stop.is_set():
        await rig.post(rig.event(room, sender, f"talkbot, question {next(said)} in {room}"))
        await asyncio.sleep(rng.uniform(*pace_s))


Disruption = Callable[[], Awaitable[None]]


def kill_at_random(
    rig: ReplicaRig,
    rng: random.Random,
    kills: int,
    gap_s: tuple[float, float] = GAP_S,
    down_s: tuple[float, float] = DOWN_S,
) -> Disruption:
    """Now and then SIGKILL a random replica, then start it again: one down at a time."""

    async def disrupt() -> None:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(*gap_s))
            await rig.kill(rng.randrange(rig.count))
            await asyncio.sleep(rng.uniform(*down_s))
            assert await rig.start(), f"a replica did not start again: {rig.start_failures}"

    return disrupt


def rolling_restart(
    rig: ReplicaRig, rng: random.Random, rounds: int = 1, pause_s: tuple[float, float] = PAUSE_S
) -> Disruption:
    """Each replica in turn stopped with SIGTERM (exit 0) and started again."""

    async def disrupt() -> None:
        for _ in range(rounds):
            for n in range(rig.count):
                await asyncio.sleep(rng.uniform(*pause_s))
                assert await rig.stop(n) == 0, f"replica {n} did not stop cleanly"
                assert await rig.start(), f"replica {n} did not start: {rig.start_failures}"

    return disrupt


async def run_traffic(
    rig: ReplicaRig,
    rng: random.Random,
    disrupt: Disruption,
    *,
    rooms: int = ROOMS,
    pace_s: tuple[float, float] = PACE_S,
    settle_s: float = SETTLE_S,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
) -> Load:
    """The rooms and the tool requests while ``disrupt`` runs; then until every accepted
    message is answered, no confirmed action is left open and a fire time came after."""
    assert await rig.start(), f"the replicas did not start: {rig.start_failures}"
    load = Load(rig, rng)
    workers = [
        asyncio.create_task(converse(rig, room, sender, rng, load.stop, pace_s=pace_s))
        for room, sender in chat_rooms(rooms)
    ]
    workers.append(asyncio.create_task(load.tools()))
    try:
        await disrupt()
        await asyncio.sleep(settle_s)
        load.stop.set()
        await asyncio.gather(*workers)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    await until(
        lambda: rig.all_answered() or None, "every accepted message answered", drain_timeout_s
    )
    await until(lambda: _no_open_action(rig), "no confirmed action left open", drain_timeout_s)
    before = len(rig.ticks())
    await until(lambda: len(rig.ticks()) > before or None, "a fire time after the chaos")
    assert await rig.stop() == 0
    return load


def _no_open_action(rig: ReplicaRig) -> bool | None:
    actions = read_pg_store(rig.database).actions
    return all(status not in OPEN_RUNS for status, _ in actions.values()) or None


# -- what must hold ------------------------------------------------------------------------


def check_rooms(rig: ReplicaRig, store: StoreView, *, repeats_allowed: bool) -> int:
    """R09 and order per room (P07) over every message sent; how many answers R05
    repeated. Without ``repeats_allowed`` (no kills), every answer comes exactly once."""
    replies = rig.replies()
    missing = sorted(rig.accepted - set(store.inbox))
    assert not missing, f"R09: accepted but not in the inbox: {missing}"
    unanswered = sorted(i for i in rig.accepted if not replies[i])
    assert not unanswered, f"R09: accepted but never answered: {unanswered}"
    chat = sorted({s.room for s in rig.sent.values() if s.room.startswith(CHAT_ROOM_PREFIX)})
    repeated = 0
    for room in chat:
        answered = [m.reply_to for m in rig.talk.messages if m.token == room and m.reply_to]
        assert answered == sorted(answered), f"{room} answered out of order: {answered}"
        for sent_id in sorted(set(answered)):
            copies = replies[sent_id]
            if len(copies) == 1:
                continue
            assert repeats_allowed, f"{sent_id} answered {len(copies)} times, no kill"
            why = _not_r05(rig, store, sent_id, copies)
            assert why is None, f"R05: {sent_id} answered {len(copies)} times, but {why}"
            repeated += 1
    return repeated


def _not_r05(
    rig: ReplicaRig, store: StoreView, sent_id: int, copies: list[SentMessage]
) -> str | None:
    """Why a repeat is not what R05 allows, or None when it is."""
    status, attempts = store.inbox[sent_id]
    apology = status == "failed"  # given up after MAX_ATTEMPTS: told so, once
    if len(copies) > attempts + apology:
        return f"only {attempts} attempts"
    if len({m.reference_id for m in copies}) != 1:
        return "with a new referenceId"
    kill_times = [at for at, _ in rig.kills]
    for copy_ in copies[:-1]:
        if not any(abs(at - copy_.at) <= R05_WINDOW_S for at in kill_times):
            return f"no replica was killed within {R05_WINDOW_S} s of the copy at {copy_.at}"
    return None


def keep_record(rig: ReplicaRig, store: StoreView) -> None:
    """Talk's record, the kills and the inbox beside the logs: the database is dropped
    with the test, and the replicas' logs are rate-limited (H05)."""
    with (rig.tmp_path / "talk.jsonl").open("w") as out:
        for m in rig.talk.messages:
            out.write(json.dumps(dataclasses.asdict(m)) + "\n")
    record = {
        "kills": rig.kills,
        "acked_at": rig.acked_at,
        "sent": {i: [s.room, s.text] for i, s in rig.sent.items()},
        "inbox": store.inbox,
        "runs": store.runs,
        "actions": store.actions,
    }
    (rig.tmp_path / "record.json").write_text(json.dumps(record, indent=1))


def reconcile(rig: ReplicaRig, load: Load, *, repeats_allowed: bool) -> dict[str, Any]:
    """The invariants over Talk's record, the tool ledger and the store; the figures."""
    store = read_pg_store(rig.database)
    keep_record(rig, store)
    repeated = check_rooms(rig, store, repeats_allowed=repeats_allowed)
    runs = check_tool_runs(rig, store, load.confirmed)
    ticks = check_fire_times(rig, store)
    return {
        "replicas": rig.count,
        "lives": rig.lives,
        "sigkills": rig.exits.count(KILLED),
        "messages_sent": len(rig.sent),
        "accepted": len(rig.accepted),
        "refused": dict(rig.statuses - Counter({200: rig.statuses[200]})),
        "post_errors": rig.post_errors,
        "answers_repeated_r05": repeated,
        "events_given_up": sum(status == "failed" for status, _ in store.inbox.values()),
        "tool_yes": len(load.confirmed),
        "tool_runs": sum(runs.values()),
        "tool_runs_interrupted": len(rig.interrupted_codes()),
        "fire_times_claimed": len(store.runs),
        "fire_times_delivered": len(ticks),
        "fire_times_lost": sum(s == "interrupted" and not ticks[t] for t, s in store.runs.items()),
        "ack_max_s": round(max(rig.ack_s, default=0.0), 3),
        "nginx_tries": dict(rig.tries()),
        "log_problems": dict(rig.log_problems()),
    }


async def chaos(
    rig: ReplicaRig, make: Callable[[random.Random], Disruption], *, repeats_allowed: bool
) -> dict[str, Any]:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(2**32)))  # noqa: S311 - not crypto
    rng = random.Random(seed)  # noqa: S311 - not crypto
    try:
        load = await run_traffic(rig, rng, make(rng))
        figures = reconcile(rig, load, repeats_allowed=repeats_allowed)
        assert rig.refused == 0, f"webhooks refused: {figures['refused']}, {rig.post_errors} cut"
        # Hidden by nginx's next try, but a replica that answers 503 could not store it.
        tries = figures["nginx_tries"]
        assert set(tries) <= NGINX_OWN | {"200"}, f"a replica refused a webhook: {tries}"
        errors = [p for p in figures["log_problems"] if p.split()[0] not in ("warning", "info")]
        assert set(errors) <= ALLOWED_ERRORS, f"replicas logged errors: {errors}"
    except AssertionError as exc:
        raise AssertionError(f"{exc} (CHAOS_SEED={seed}, logs in {rig.tmp_path})") from exc
    log.info("replica chaos seed=%s %s", seed, figures)
    return figures


# -- the tests -------------------------------------------------------------------------------


@needs_nginx
async def test_p10_replicas_behind_nginx_killed_at_random_lose_nothing_repeat_only_r05(
    tmp_path: Path, postgres_url: str
) -> None:
    async with replica_rig(tmp_path, postgres_url) as rig:
        figures = await chaos(
            rig, lambda rng: kill_at_random(rig, rng, SHORT_KILLS), repeats_allowed=True
        )
    assert figures["sigkills"] == SHORT_KILLS
    assert figures["accepted"] > 5 * ROOMS


@needs_nginx
async def test_p11_a_rolling_restart_behind_nginx_refuses_nothing_and_answers_all_once(
    tmp_path: Path, postgres_url: str
) -> None:
    async with replica_rig(tmp_path, postgres_url) as rig:
        figures = await chaos(rig, lambda rng: rolling_restart(rig, rng), repeats_allowed=False)
    assert figures["lives"] == 2 * REPLICAS
    assert figures["accepted"] == figures["messages_sent"]
    assert figures["answers_repeated_r05"] == 0
