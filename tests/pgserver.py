"""A real PostgreSQL server for the tests (and the benches), in a temporary directory.

``PostgresServer`` runs Debian's (or any) ``initdb`` and ``postgres`` binaries: a fresh
cluster under /tmp, listening on 127.0.0.1 on a free port and on a unix socket inside its
directory, removed again by ``stop()``. As root it runs them as ``postgres`` (or
``nobody``), since initdb refuses to run as root.

Also a pytest plugin; register it in tests/conftest.py with::

    pytest_plugins = ["tests.pgserver"]

Fixtures: ``postgres_server`` (one server for the session, started by the first test that
asks for it), ``postgres_url`` (a fresh empty database per test, dropped afterwards) and
``private_postgres_server`` (a server of the test's own, for tests that kill, pause or
restart it). Without the binaries those tests are skipped, and the end of the run says so
in a block nobody can miss; with TALKBOT_REQUIRE_POSTGRES=1 (CI) they fail instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Self
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

SUPERUSER = "talkbot_test"
REQUIRE_ENV = "TALKBOT_REQUIRE_POSTGRES"
BINDIR_ENV = "TALKBOT_POSTGRES_BINDIR"  # use exactly this bin directory
DEBIAN_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 25

# Tests: no fsync and no full-page images (a killed server still keeps every commit, the
# kernel has the writes; only a machine crash would lose them). synchronous_commit stays
# on: with it off, a commit may sit in the server's WAL buffers (shared memory) for up to
# 3 x wal_writer_delay, and kill() would lose it, which no outage test should have to know.
FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}

HBA = f"""\
# written by tests/pgserver.py
local all all trust
host all {SUPERUSER} 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


class PostgresUnavailableError(Exception):
    """The PostgreSQL server binaries are not installed."""


class PostgresStartError(RuntimeError):
    """initdb or postgres failed; the message ends with the tail of the server's log."""


# -- finding the binaries and the account to run them as --------------------------------------


def _version_key(bindir: Path) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,); 9.6 -> (9, 6); anything else sorts last."""
    name = bindir.parent.name
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return (-1,)
    return tuple(int(part) for part in name.split("."))


def _is_server_bindir(path: Path) -> bool:
    return (path / "initdb").is_file() and (path / "postgres").is_file()


def find_bindir() -> Path:
    """Where initdb and postgres are: $TALKBOT_POSTGRES_BINDIR, else ``pg_config --bindir``
    when that has them, else the highest version under /usr/lib/postgresql/*/bin."""
    if forced := os.environ.get(BINDIR_ENV):
        if _is_server_bindir(Path(forced)):
            return Path(forced)
        raise PostgresUnavailableError(f"no initdb and postgres in {BINDIR_ENV}={forced}")
    looked = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run(  # noqa: S603 - a fixed argument list
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        if out.returncode == 0 and out.stdout.strip():
            bindir = Path(out.stdout.strip())
            if _is_server_bindir(bindir):
                return bindir
            looked.append(f"pg_config --bindir ({bindir})")  # libpq-dev's pg_config: no server
    for bindir in sorted(DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True):
        if _is_server_bindir(bindir):
            return bindir
    looked.append(f"{DEBIAN_ROOT}/*/bin")
    raise PostgresUnavailableError(f"no initdb found in {' or '.join(looked)}")


@dataclass(frozen=True)
class Account:
    """An unprivileged account to run initdb and postgres as, when we are root."""

    name: str
    uid: int
    gid: int


def server_account() -> Account | None:
    """None when not root (run as ourselves); else ``postgres`` if it exists, or ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return Account(name, entry.pw_uid, entry.pw_gid)
    raise PostgresStartError("running as root, and neither a 'postgres' nor a 'nobody' account")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server ----------------------------------------------------------------------------


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, on 127.0.0.1.

    ``start()`` runs initdb (once) and the server; ``shutdown()`` stops it and keeps the
    data; ``restart()`` starts it again on the same port; ``kill()`` SIGKILLs every
    process of the server at once (a crash); ``pause()``/``resume()`` SIGSTOP/SIGCONT them
    (a server that hangs); ``stop()`` shuts down and removes the directory.

    ``durable=True`` keeps PostgreSQL's defaults (fsync, full-page writes) for benches
    where a commit must be a real commit; the default is fast settings for tests.
    """

    def __init__(
        self,
        *,
        durable: bool = False,
        port: int | None = None,
        parent: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = find_bindir()
        self.account = server_account()
        self.durable = durable
        self.port = port or free_port()
        self._fixed_port = port is not None
        self.settings = {**({} if durable else FAST_SETTINGS), **(settings or {})}
        # As root the server runs as another account: under /tmp (1777) every parent of
        # its directory is traversable; elsewhere the caller sees to it.
        self._parent = parent or (Path("/tmp") if self.account else None)  # noqa: S108
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- paths and URLs

    def _dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("the server was not started")
        return self.workdir

    @property
    def data_dir(self) -> Path:
        return self._dir() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._dir() / "run"

    @property
    def log_path(self) -> Path:
        return self._dir() / "postgres.log"

    def url(
        self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None
    ) -> str:
        """A libpq URL over TCP: ``postgresql://talkbot_test@127.0.0.1:PORT/dbname``."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser connection in autocommit mode; close it (use ``with``)."""
        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The postmaster's pid (its process group holds every backend)."""
        if self._proc is None:
            raise RuntimeError("the server is not running")
        return self._proc.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- databases and roles

    def create_database(self, name: str, owner: str | None = None) -> str:
        """CREATE DATABASE ``name`` (owned by ``owner``, e.g. a role of create_role);
        its URL for the superuser."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner is not None:
            query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        with self.connect() as conn:
            conn.execute(query)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE, disconnecting whoever is still connected to it."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def create_role(self, name: str, password: str) -> None:
        """A login role that must give ``password`` over TCP (scram-sha-256)."""
        # Utility statements take no bind parameters: the password goes in as a literal.
        query = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)
        )
        with self.connect() as conn:
            conn.execute(query)

    def drop_role(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    # -- life cycle

    def start(self) -> Self:
        """initdb (the first time), then the server; returns once it accepts connections."""
        if self.running:
            return self
        if self.workdir is None:
            self._make_workdir()
            self._initdb()
        for attempt in itertools.count(1):
            self._launch()
            try:
                self._wait_ready()
            except PostgresStartError:
                # Another process took the free port between our probe and the bind.
                tail = self.log_tail(5)
                taken = "could not bind" in tail or "in use" in tail
                if self.running or not taken or self._fixed_port or attempt >= 3:
                    self.kill()
                    raise
                self.port = free_port()
                continue
            return self
        raise AssertionError("unreachable")

    def pids(self) -> list[int]:
        """The postmaster and its children (each backend is a session of its own, so the
        postmaster's process group does not reach them)."""
        if not self.running:
            return []
        return [self.pid, *_children(self.pid)]

    def shutdown(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect); keeps the data."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self.resume()
            children = _children(self._proc.pid)
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                return
            _wait_gone(children)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, like a crash; keeps the data."""
        if self._proc is None:
            return
        postmaster = self._proc.pid
        _signal(postmaster, signal.SIGSTOP)  # it forks no new child meanwhile
        children = _children(postmaster)
        for pid in [*children, postmaster]:
            _signal(pid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None
        self._paused = False
        _wait_gone(children)

    def restart(self) -> None:
        """Shut down if running, then start again on the same port (crash recovery if killed)."""
        self.shutdown()
        self._fixed_port = True
        self.start()

    def pause(self) -> None:
        """SIGSTOP every process of the server: connections hang instead of failing."""
        if self.running and not self._paused:
            _signal(self.pid, signal.SIGSTOP)
            for pid in _children(self.pid):
                _signal(pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._paused and self._proc is not None:
            for pid in _children(self._proc.pid):
                _signal(pid, signal.SIGCONT)
            _signal(self._proc.pid, signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """Shut down and remove the directory; the object cannot start again."""
        try:
            self.shutdown()
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the mechanics

    def _chown(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.uid, self.account.gid)

    def _as_account(self) -> dict[str, Any]:
        """Popen arguments: run as the account, from a directory it can enter, in C locale."""
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        for name in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS"):
            env.pop(name, None)
        kwargs: dict[str, Any] = {"cwd": self._dir(), "env": env}
        if self.account is not None:
            env["HOME"] = str(self._dir())
            kwargs.update(user=self.account.uid, group=self.account.gid, extra_groups=[])
        return kwargs

    def _make_workdir(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="talkbot-pg-", dir=self._parent))
        self.workdir.chmod(0o755)
        self._chown(self.workdir)
        self.socket_dir.mkdir(mode=0o755)
        self._chown(self.socket_dir)
        self.log_path.touch(mode=0o644)
        self._chown(self.log_path)

    def _initdb(self) -> None:
        argv = [
            str(self.bindir / "initdb"),
            *("-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8", "--locale=C"),
            *("--auth-local=trust", "--auth-host=trust", "--no-sync"),
        ]
        with self.log_path.open("ab") as log:
            done = subprocess.run(  # noqa: S603 - our own argument list
                argv, stdout=log, stderr=log, check=False, timeout=120, **self._as_account()
            )
        if done.returncode != 0:
            raise PostgresStartError(
                f"initdb exited with {done.returncode}; the end of {self.log_path}:\n"
                + self.log_tail()
            )
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(HBA)
        self._chown(hba)

    def _launch(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "password_encryption": "scram-sha-256",  # the default only since 14
            **self.settings,
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with self.log_path.open("ab") as log:
            # A session of its own: a Ctrl-C meant for pytest does not reach it.
            self._proc = subprocess.Popen(  # noqa: S603 - our own argument list
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                **self._as_account(),
            )
        self._paused = False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise PostgresStartError(
                    f"postgres exited with {code}; the end of {self.log_path}:\n" + self.log_tail()
                )
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:  # refused, or "starting up"
                last = exc
            time.sleep(0.05)
        raise PostgresStartError(
            f"postgres did not accept connections within {START_TIMEOUT_S:g} s ({last}); "
            f"the end of {self.log_path}:\n" + self.log_tail()
        )


def _children(ppid: int) -> list[int]:
    """The pids whose parent is ``ppid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == ppid:
            found.append(int(stat.parent.name))
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    """Until the processes have exited (bounded; a zombie counts as gone: it holds no
    shared memory, so it cannot block a restart)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state == "Z":
                break
            time.sleep(0.01)


# -- the pytest plugin ---------------------------------------------------------------------

_UNAVAILABLE = pytest.StashKey[str]()
_database_ids = itertools.count(1)


def _unavailable(config: pytest.Config, reason: str) -> NoReturn:
    """Skip, and remember why for the summary; fail instead under TALKBOT_REQUIRE_POSTGRES=1."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}\n({REQUIRE_ENV}=1: PostgreSQL is required)", pytrace=False)
    config.stash[_UNAVAILABLE] = reason
    pytest.skip(reason.splitlines()[0])


def start_or_skip(config: pytest.Config, *, durable: bool = False) -> PostgresServer:
    """A started server, or the test is skipped (failed under TALKBOT_REQUIRE_POSTGRES=1)."""
    try:
        server = PostgresServer(durable=durable)
    except PostgresUnavailableError as exc:
        _unavailable(config, f"PostgreSQL not installed: {exc}")
    except PostgresStartError as exc:
        _unavailable(config, f"PostgreSQL cannot start: {exc}")
    try:
        return server.start()
    except PostgresStartError as exc:
        server.stop()
        _unavailable(config, f"PostgreSQL did not start: {exc}")


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """One server for the whole session; do not kill or stop it (private_postgres_server)."""
    server = start_or_skip(request.config)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database of the session's server, dropped after the test."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"t{next(_database_ids)}_{stem}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture
def private_postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """A server of the test's own (about a second to start), free to kill, pause, restart."""
    server = start_or_skip(request.config)
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    reason = config.stash.get(_UNAVAILABLE, None)
    if reason is None:
        return
    skipped = sum(
        1
        for report in terminalreporter.stats.get("skipped", [])
        if "PostgreSQL" in str(getattr(report, "longrepr", ""))
    )
    terminalreporter.section("PostgreSQL tests were SKIPPED", sep="!", red=True, bold=True)
    terminalreporter.line(
        f"PostgreSQL tests were SKIPPED ({skipped}): {reason}.\n"
        "Install Debian's postgresql package (CI does).",
        red=True,
        bold=True,
    )
