"""tests/pgserver.py: a real PostgreSQL for the tests, and its loud skip."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:  # imported at run time by pytest_plugins only, so pytest rewrites it first
    from tests.pgserver import PostgresServer

pytest_plugins = ["tests.pgserver"]  # a no-op once tests/conftest.py registers it

REQUIRE_ENV = "TALKBOT_REQUIRE_POSTGRES"

ROOT = Path(__file__).resolve().parents[1]


def user_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema') ORDER BY tablename"
        ).fetchall()
    return [row[0] for row in rows]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_session_server_runs_with_the_test_settings(postgres_server: PostgresServer) -> None:
    with postgres_server.connect() as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        synchronous = conn.execute("SHOW synchronous_commit").fetchone()
        user = conn.execute("SELECT current_user").fetchone()
    assert version is not None
    assert int(version[0]) >= 100000
    assert fsync == ("off",)
    assert synchronous == ("on",)  # so that kill() loses no commit
    assert user == ("talkbot_test",)
    assert postgres_server.url("db").startswith("postgresql://talkbot_test@127.0.0.1:")


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_empty_database(postgres_url: str, run: int) -> None:
    assert user_tables(postgres_url) == []
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE marker (run int)")  # the second run would fail on reuse
        conn.execute("INSERT INTO marker VALUES (%s)", [run])
    assert user_tables(postgres_url) == ["marker"]


def test_databases_are_separate_and_dropped_even_when_connected(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    other = postgres_server.create_database("pgserver_other")
    try:
        with psycopg.connect(postgres_url) as conn:
            conn.execute("CREATE TABLE mine (x int)")
        assert user_tables(other) == []
        lingering = psycopg.connect(other)  # DROP ... WITH (FORCE) disconnects it
        try:
            postgres_server.drop_database("pgserver_other")
            with pytest.raises(psycopg.OperationalError):
                lingering.execute("SELECT 1")
        finally:
            lingering.close()
    finally:
        postgres_server.drop_database("pgserver_other")
    with postgres_server.connect() as conn:
        gone = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'pgserver_other'")
        assert gone.fetchone() is None


def test_a_role_with_a_password_connects_only_with_that_password(
    postgres_server: PostgresServer,
) -> None:
    password = "p@ss w:rd/'\"%"  # URL and SQL quoting both get exercised
    postgres_server.create_role("pgserver_alice", password)
    try:
        url = postgres_server.create_database("pgserver_alices", owner="pgserver_alice")
        dbname = url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_server.url(dbname, "pgserver_alice", password)) as conn:
            conn.execute("CREATE TABLE owned (x int)")  # the owner may create in public
            assert conn.execute("SELECT current_user").fetchone() == ("pgserver_alice",)
        for wrong in ("wrong", password + "x"):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(postgres_server.url(dbname, "pgserver_alice", wrong))
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(postgres_server.url(dbname, "pgserver_alice"))
    finally:
        postgres_server.drop_database("pgserver_alices")
        postgres_server.drop_role("pgserver_alice")


def test_kill_restart_and_pause(private_postgres_server: PostgresServer) -> None:
    server = private_postgres_server
    url = server.create_database("outage")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1)")
        conn.commit()
        processes = server.pids()  # the postmaster, its helpers and this backend
        assert len(processes) >= 3
        server.kill()
        assert not server.running
        assert [pid for pid in processes if alive(pid)] == []
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    server.restart()  # crash recovery, same port, the commit is still there
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]

    server.pause()  # a hung server: connecting times out instead of being refused
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            psycopg.connect(url, connect_timeout=2)
        assert time.monotonic() - started >= 1.5
    finally:
        server.resume()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1,)

    workdir = server.workdir
    assert workdir is not None
    server.stop()
    assert not workdir.exists()


# -- the loud skip, in a pytest of its own with the binaries "missing" -------------------------

USES_POSTGRES = """
pytest_plugins = ["tests.pgserver"]

def test_needs_postgres(postgres_url):
    pass

def test_plain():
    pass
"""


def run_inner_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(USES_POSTGRES))
    environ = {k: v for k, v in os.environ.items() if k != REQUIRE_ENV}
    environ.update(PYTHONPATH=str(ROOT), TALKBOT_POSTGRES_BINDIR=str(tmp_path), **env)
    return subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_without_postgres_the_tests_are_skipped_loudly(tmp_path: Path) -> None:
    result = run_inner_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
    assert "PostgreSQL not installed: no initdb and postgres in" in result.stdout
    assert "PostgreSQL tests were SKIPPED (1): PostgreSQL not installed" in result.stdout
    assert "Install Debian's postgresql package (CI does)." in result.stdout


def test_without_postgres_the_tests_fail_when_postgres_is_required(tmp_path: Path) -> None:
    result = run_inner_pytest(tmp_path, **{REQUIRE_ENV: "1"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 error" in result.stdout
    assert "PostgreSQL not installed" in result.stdout
    assert "PostgreSQL is required" in result.stdout
    assert "were SKIPPED" not in result.stdout
