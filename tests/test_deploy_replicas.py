"""deploy/replicas.md and its proxy examples, held to what they claim.

- The guide's files exist, its TOML and systemd drop-ins are talkbot's config and valid
  units, and the timings it states are the code's.
- Its PostgreSQL setup (the SQL, pg_hba.conf lines, TLS with ``sslmode=verify-full``),
  applied to a real server of the test's own, gives a database that talkbot's store opens
  as the unprivileged role, only over TLS, with the guide's URL as written (host, port and
  CA file swapped for the test's).
- deploy/nginx-replicas.conf passes ``nginx -t`` and, run as written (addresses, port and
  certificate swapped), passes a 480 kB webhook that one replica answered with 503, cut
  off, or left unanswered to the other replica, byte for byte, within Talk's 5 s; a 401
  is passed back, not retried. nginx is in CI.
- deploy/haproxy-replicas.cfg: the same, only where haproxy is installed (CI does not
  install it; ``apt-get install haproxy`` runs these). The keepalived example likewise,
  with ``keepalived -t``, only where keepalived is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from bot.clock import SystemClock
from bot.config import ServerSettings, StorageSettings, settings_from_mapping
from bot.replicas import BEATS_PER_LEASE, REVISION_CHECK_S, SWEEP_S
from bot.store import Store
from bot.store.steps import MIGRATIONS
from tests.harness import free_port
from tests.pgserver import PostgresServer

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
GUIDE = DEPLOY / "replicas.md"
NGINX_SITE = DEPLOY / "nginx-replicas.conf"
HAPROXY_CFG = DEPLOY / "haproxy-replicas.cfg"
UNIT = REPO / "systemd" / "talkbot.service"
SOCKET_UNIT = REPO / "systemd" / "talkbot.socket"

TALK_TIMEOUT_S = 5.0  # Talk waits this long for a webhook's answer, and never retries
# The guide's hosts: the two replicas, where the proxies run too.
REPLICA_HOSTS = ("10.0.0.11", "10.0.0.12")


def program(name: str) -> str | None:
    """A program on PATH, or in /usr/sbin (Debian's nginx, haproxy, keepalived)."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


NGINX = program("nginx")
HAPROXY = program("haproxy")
KEEPALIVED = program("keepalived")
OPENSSL = program("openssl")
SYSTEMD_ANALYZE = program("systemd-analyze")
needs_nginx = pytest.mark.skipif(
    NGINX is None or OPENSSL is None, reason="nginx or openssl is not installed"
)
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None or OPENSSL is None,
    reason="haproxy is not installed (CI does not install it: apt-get install haproxy)",
)


# -- the guide's text --------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced block of the guide and the paragraph just before it."""

    lang: str
    body: str
    before: str


def guide_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = GUIDE.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = re.fullmatch(r"```(\w*)", lines[index])
        if fence is None:
            index += 1
            continue
        before = paragraph_before(lines, index)
        end = lines.index("```", index + 1)
        blocks.append(Block(fence.group(1), "\n".join(lines[index + 1 : end]) + "\n", before))
        index = end + 1
    return blocks


def paragraph_before(lines: list[str], index: int) -> str:
    """The paragraph that ends right above line ``index`` (blank lines skipped)."""
    end = index
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and lines[start - 1].strip() and not lines[start - 1].startswith("```"):
        start -= 1
    return " ".join(lines[start:end])


def block_after(marker: str) -> Block:
    """The one block whose preceding paragraph names ``marker`` (a file, mostly)."""
    found = [block for block in guide_blocks() if marker in block.before]
    assert len(found) == 1, f"{len(found)} blocks after a paragraph naming {marker!r}"
    return found[0]


def block_with(lang: str, text: str) -> Block:
    found = [block for block in guide_blocks() if block.lang == lang and text in block.body]
    assert len(found) == 1, f"{len(found)} {lang} blocks with {text!r}"
    return found[0]


def guide_config() -> dict[str, Any]:
    return tomllib.loads(block_with("toml", "[storage]").body)


def ini_values(text: str, key: str) -> list[str]:
    return [
        line.split("=", 1)[1].strip()
        for line in text.splitlines()
        if line.split("=", 1)[0].strip() == key
    ]


def socket_drop_in() -> str:
    return block_after("talkbot.socket.d/replica.conf").body


def service_drop_in() -> str:
    return block_after("talkbot.service.d/replica.conf").body


def service_environment(credentials: Path) -> dict[str, str]:
    """The drop-in's Environment= lines, with %d (systemd's credentials directory)."""
    pairs = (value.split("=", 1) for value in ini_values(service_drop_in(), "Environment"))
    return {name: value.replace("%d", str(credentials)) for name, value in pairs}


MINIMAL_NEXTCLOUD = {"url": "https://cloud.test", "bot_secret": "s" * 64}


def test_every_file_the_guide_names_exists() -> None:
    text = GUIDE.read_text()
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    named = re.findall(r"`((?:deploy|docs|systemd|bot|tests|bench)/[\w./-]*\w)`", text)
    assert links
    assert named
    missing = [link for link in links if not (GUIDE.parent / link).exists()]
    missing += [path for path in named if not (REPO / path).exists()]
    assert missing == []
    assert {"nginx-replicas.conf", "haproxy-replicas.cfg"} <= set(links)


def test_the_guides_settings_are_talkbots_own_and_each_host_only_adds_its_address(
    tmp_path: Path,
) -> None:
    """talkbot.toml identical on both hosts; each host's drop-ins give its address and
    the password from systemd's credentials."""
    config = guide_config()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "db_password").write_text("the database password\n")
    environ = service_environment(credentials)
    settings = settings_from_mapping({"nextcloud": MINIMAL_NEXTCLOUD, **config}, environ)

    storage = settings.storage
    assert storage.backend == "postgres"
    assert storage.url == config["storage"]["url"]
    assert "sslmode=verify-full" in storage.url  # TLS, the certificate and its name checked
    assert storage.password.get_secret_value() == "the database password"
    assert storage.lease_s == StorageSettings().lease_s  # the guide shows the default
    assert storage.location == "postgresql://db.example.com/talkbot"  # shown without secrets
    # The credential systemd loads is the file root's `talkbot check` reads.
    assert f"db_password:{config['storage']['password_file']}" in ini_values(
        service_drop_in(), "LoadCredential"
    )

    # The guide's form for a database on several hosts is a URL talkbot takes too.
    several = "talkbot@db1.example.com,db2.example.com/talkbot"
    assert f"`postgresql://{several}`" in GUIDE.read_text()
    url = config["storage"]["url"].replace("talkbot@db.example.com/talkbot", several)
    multi = {
        **config,
        "storage": {**config["storage"], "url": f"{url}&target_session_attrs=read-write"},
    }
    settings_multi = settings_from_mapping({"nextcloud": MINIMAL_NEXTCLOUD, **multi}, environ)
    assert settings_multi.storage.location == f"postgresql://{several.split('@')[1]}"

    [listen] = [value for value in ini_values(socket_drop_in(), "ListenStream") if value]
    assert "" in ini_values(socket_drop_in(), "ListenStream")  # clears the unit's 127.0.0.1
    assert ini_values(socket_drop_in(), "FreeBind") == ["yes"]
    host, port = listen.rsplit(":", 1)
    assert (settings.server.host, settings.server.port) == (host, int(port))
    assert settings.server.port == ServerSettings().port  # the proxies' upstream port
    assert host in REPLICA_HOSTS
    assert settings.server.allowed_sources == tuple(f"{h}/32" for h in REPLICA_HOSTS)
    assert settings.server.public_url == "https://bot.example.com/webhook"


def test_the_guide_states_the_replica_timings_of_the_code() -> None:
    text = " ".join(GUIDE.read_text().split())
    assert f"renews its leases {BEATS_PER_LEASE} times per `[storage] lease_s`" in text
    assert f"({StorageSettings().lease_s:g} s by default)" in text
    assert f"within about {SWEEP_S:g} s" in text
    assert REVISION_CHECK_S == 1.0
    assert "within about a second" in text
    assert f"{ServerSettings().max_body_bytes}" in HAPROXY_CFG.read_text()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_guides_drop_ins_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    (prefix / "venv" / "bin").mkdir(parents=True)
    binary = prefix / "venv" / "bin" / "talkbot"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)  # verify checks that ExecStart's program exists
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/talkbot", str(prefix)))
    shutil.copy(SOCKET_UNIT, tmp_path / SOCKET_UNIT.name)
    for name, text in (
        ("talkbot.socket", socket_drop_in()),
        ("talkbot.service", service_drop_in()),
    ):
        (tmp_path / f"{name}.d").mkdir()
        (tmp_path / f"{name}.d" / "replica.conf").write_text(text)
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(  # noqa: S603 - systemd's own check of our units
        [SYSTEMD_ANALYZE, "verify", str(unit), str(tmp_path / SOCKET_UNIT.name)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # an unknown key in a drop-in is only a warning


# -- PostgreSQL as the guide sets it up ----------------------------------------------------


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate for ``name`` (and 127.0.0.1), its own CA; (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    assert OPENSSL is not None
    subprocess.run(  # noqa: S603 - openssl with test-made arguments
        [
            OPENSSL,
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return cert, key


def guide_sql(password: str) -> list[sql.Composed | sql.SQL]:
    """The guide's statements; ``\\password talkbot`` is what psql sends for it."""
    body = block_with("sql", "CREATE ROLE talkbot").body
    assert "\\password talkbot\n" in body
    statements: list[sql.Composed | sql.SQL] = []
    for line in body.splitlines():
        if line.startswith("\\password"):
            statements.append(sql.SQL("ALTER ROLE talkbot PASSWORD {}").format(password))
        elif line.strip():
            statements.append(sql.SQL(line.strip().removesuffix(";")))
    return statements


def guide_hba_lines(address: str) -> list[str]:
    """The guide's pg_hba.conf lines, for connections from ``address`` instead."""
    lines = [
        line.split()
        for line in block_after("pg_hba.conf").body.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [fields[3] for fields in lines] == [f"{host}/32" for host in REPLICA_HOSTS]
    assert {(fields[0], fields[1], fields[2], fields[4]) for fields in lines} == {
        ("hostssl", "talkbot", "talkbot", "scram-sha-256")
    }
    return list(dict.fromkeys(" ".join([*fields[:3], address, fields[4]]) for fields in lines))


def serve_tls_and_the_guides_hba(server: PostgresServer, cert: Path, key: Path) -> None:
    """ssl = on with the test's certificate, and pg_hba.conf as the guide says (plus the
    test's own superuser); then reload."""
    conf = block_after("postgresql.conf").body
    assert "ssl = on" in conf
    assert "password_encryption = scram-sha-256" in conf
    if server.account is not None:  # the key must be the server's own, mode 0600
        for path in (cert, key):
            os.chown(path, server.account.uid, server.account.gid)
    key.chmod(0o600)
    hba = server.data_dir / "pg_hba.conf"
    hba.write_text(
        "local all all trust\n"
        "host all talkbot_test 127.0.0.1/32 trust\n"
        + "".join(f"{line}\n" for line in guide_hba_lines("127.0.0.1/32"))
    )
    with server.connect() as conn:
        for name, value in (("ssl_cert_file", cert), ("ssl_key_file", key), ("ssl", "on")):
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), str(value))
            )
        conn.execute("SELECT pg_reload_conf()")


def connect_when_reloaded(url: str, password: str) -> psycopg.Connection[Any]:
    """A connection as the guide's role, once the server has reloaded its settings."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return psycopg.connect(url, password=password, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_the_guides_postgres_setup_gives_a_store_talkbot_opens_only_over_tls(
    private_postgres_server: PostgresServer,
) -> None:
    server = private_postgres_server
    assert server.workdir is not None
    password = "a3f1" * 16  # as `openssl rand -hex 32` makes it
    with server.connect() as conn:
        for statement in guide_sql(password):
            conn.execute(statement)
    cert, key = self_signed(server.workdir, "localhost")
    serve_tls_and_the_guides_hba(server, cert, key)

    url = guide_config()["storage"]["url"]
    assert url.count("db.example.com") == 1
    assert url.count("/etc/talkbot/db-ca.crt") == 1
    url = url.replace("db.example.com", f"localhost:{server.port}")
    url = url.replace("/etc/talkbot/db-ca.crt", str(cert))
    with connect_when_reloaded(url, password) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)

    refused = {
        "without TLS": (url.replace("sslmode=verify-full", "sslmode=disable"), password),
        "another password": (url, "not-the-password"),
        "another database": (url.replace("/talkbot?", "/postgres?"), password),
    }
    for case, (other_url, other_password) in refused.items():
        with pytest.raises(psycopg.OperationalError):  # noqa: PT012 - one attempt per case
            psycopg.connect(other_url, password=other_password, connect_timeout=5).close()
            pytest.fail(f"connected {case}")

    store = Store.open_postgres(url, password, SystemClock())  # creates the schema
    await store.close()
    # Several hosts, as a libpq URL may name them: the first is gone, the second answers.
    hosts = f"localhost:{free_port()},localhost:{server.port}"
    several = url.replace(f"localhost:{server.port}", hosts) + "&target_session_attrs=read-write"
    store = Store.open_postgres(several, password, SystemClock())
    await store.close()
    with server.connect("talkbot") as conn:
        assert conn.execute("SELECT version FROM talkbot_schema").fetchone() == (len(MIGRATIONS),)
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        )
        assert owners.fetchall() == [("talkbot",)]


# -- the proxies -----------------------------------------------------------------------------


def test_the_proxy_examples_keep_talkbots_limits_and_buffer_for_a_retry() -> None:
    limit = ServerSettings().max_body_bytes
    port = ServerSettings().port
    nginx = NGINX_SITE.read_text()
    assert re.search(rf"client_max_body_size\s+{limit // 1024 // 1024}m;", nginx)
    assert re.search(rf"client_body_buffer_size\s+{limit // 1024 // 1024}m;", nginx)
    assert "proxy_request_buffering off" not in nginx  # a streamed body cannot be re-sent
    upstreams = re.findall(r"^\s*server\s+([\d.]+):(\d+)", nginx, re.MULTILINE)
    assert upstreams == [(host, str(port)) for host in REPLICA_HOSTS]
    assert re.search(r"proxy_next_upstream\s[^;]*\bnon_idempotent\b", nginx)
    seconds = {
        name: float(value) for name, value in re.findall(r"(proxy_\w+_timeout)\s+(\d+)s;", nginx)
    }
    assert seconds["proxy_connect_timeout"] + seconds["proxy_read_timeout"] < TALK_TIMEOUT_S
    assert seconds["proxy_next_upstream_timeout"] < TALK_TIMEOUT_S

    haproxy = HAPROXY_CFG.read_text()
    [bufsize] = re.findall(r"tune\.bufsize\s+(\d+)", haproxy)
    assert int(bufsize) >= limit + 32 * 1024  # the whole body and its headers, for a retry
    assert re.search(
        rf"deny_status 413 if {{ req\.hdr_val\(content-length\) gt {limit} }}", haproxy
    )
    servers = re.findall(r"^\s*server\s+\w+\s+([\d.]+):(\d+)", haproxy, re.MULTILINE)
    assert servers == [(host, str(port)) for host in REPLICA_HOSTS]
    assert re.search(r"retry-on conn-failure empty-response response-timeout 503\n", haproxy)
    server_timeout = re.search(r"timeout server (\d+)s", haproxy)
    connect_timeout = re.search(r"timeout connect (\d+)s", haproxy)
    assert server_timeout
    assert connect_timeout
    assert int(server_timeout.group(1)) + int(connect_timeout.group(1)) < TALK_TIMEOUT_S
    # The comments say what talkbot.toml then holds: the guide's allowed_sources.
    sources = json.dumps(guide_config()["server"]["allowed_sources"])
    assert f"allowed_sources = {sources}" in nginx
    assert f"allowed_sources = {sources}" in haproxy


@dataclass
class Delivery:
    port: int
    body: bytes
    random: str


@dataclass
class FakeReplicas:
    """Two HTTP servers in place of two talkbot replicas. Each POST is recorded; the first
    ``failures`` POSTs, whichever replica gets them, fail as ``how``: "503", "401",
    "cut" (the connection closed without an answer) or "silent" (no answer until the
    proxy gives up). GET /readyz is always 200, as a replica whose store commits."""

    how: str
    failures: int = 1
    deliveries: list[Delivery] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [int(server.sockets[0].getsockname()[1]) for server in self.servers]

    async def start(self) -> None:
        for _ in range(2):
            self.servers.append(await asyncio.start_server(self._serve, "127.0.0.1", 0))

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = int(writer.get_extra_info("sockname")[1])
        try:
            while True:  # HAProxy keeps its connections to servers alive
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                method = head.split(" ", 1)[0]
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
                    if name
                }
                assert "chunked" not in headers.get("transfer-encoding", "")
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "GET":
                    await respond(writer, 200)
                    continue
                self.deliveries.append(Delivery(port, body, headers.get(RANDOM_HEADER, "")))
                if self.failures <= 0:
                    await respond(writer, 200)
                    continue
                self.failures -= 1
                if self.how in ("503", "401"):
                    await respond(writer, int(self.how))
                    continue
                if self.how == "silent":
                    await reader.read()  # until the proxy closes its end
                return  # "cut", or the proxy gave up
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def respond(writer: asyncio.StreamWriter, status: int) -> None:
    writer.write(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()


RANDOM_HEADER = "x-nextcloud-talk-random"


def talk_like_webhook() -> bytes:
    """About as large as Talk's largest webhooks: a message of 40,000 emoji, as PHP's
    json_encode escapes them (12 bytes each)."""
    message = {"type": "Create", "object": {"name": "message", "content": "😀" * 40_000}}
    return json.dumps(message).encode()


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is not in the example once"
    return text.replace(old, new)


@dataclass
class RunningProxy:
    name: str
    url: str
    workdir: Path
    proc: asyncio.subprocess.Process

    def tail(self) -> str:
        logs = sorted(self.workdir.glob("*.log"))
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in logs)


@contextlib.asynccontextmanager
async def start_proxy(
    name: str, argv: list[str], workdir: Path, port: int
) -> AsyncIterator[RunningProxy]:
    """``argv`` in the foreground, its own process group; yields once it listens."""
    with (workdir / f"{name}-out.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    proxy = RunningProxy(name, f"https://127.0.0.1:{port}/webhook", workdir, proc)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.returncode is None, f"{name} exited:\n{proxy.tail()}"
            assert time.monotonic() < deadline, f"{name} did not listen:\n{proxy.tail()}"
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            break
        yield proxy
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                os.killpg(proc.pid, 9)
                await proc.wait()


def temp_paths(directory: Path) -> str:
    """nginx's temporary directories in ``directory`` (the built-in ones are root's)."""
    return "".join(
        f"    {kind}_temp_path {directory}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


@contextlib.asynccontextmanager
async def nginx_in_front(workdir: Path, replicas: FakeReplicas) -> AsyncIterator[RunningProxy]:
    """deploy/nginx-replicas.conf as written, but for loopback: its listen address, the
    replicas' addresses and the certificate swapped; nginx in the foreground."""
    assert NGINX is not None
    cert, key = self_signed(workdir, "bot.example.com")
    port = free_port()
    site = NGINX_SITE.read_text()
    site = replace_once(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
    site = replace_once(site, "    listen [::]:443 ssl http2;\n", "")
    site = replace_once(site, "/etc/letsencrypt/live/bot.example.com/fullchain.pem", str(cert))
    site = replace_once(site, "/etc/letsencrypt/live/bot.example.com/privkey.pem", str(key))
    for host, fake_port in zip(REPLICA_HOSTS, replicas.ports, strict=True):
        site = replace_once(site, f"{host}:8585", f"127.0.0.1:{fake_port}")
    (workdir / "site.conf").write_text(site)
    # As root the workers would run as "nobody", who may not enter tmp_path.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = temp_paths(workdir)
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log info;\nevents {{\n    worker_connections 64;\n}}\n"
        f"http {{\n    access_log off;\n{temp}    include {workdir}/site.conf;\n}}\n"
    )
    argv = [NGINX, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    async with start_proxy("nginx", [*argv, "-g", "daemon off;"], workdir, port) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def haproxy_in_front(workdir: Path, replicas: FakeReplicas) -> AsyncIterator[RunningProxy]:
    """deploy/haproxy-replicas.cfg as written, but for loopback (as nginx_in_front)."""
    assert HAPROXY is not None
    cert, key = self_signed(workdir, "bot.example.com")
    pem = workdir / "bot.example.com.pem"
    pem.write_text(cert.read_text() + key.read_text())
    port = free_port()
    cfg = HAPROXY_CFG.read_text()
    cfg = replace_once(cfg, "bind :443 ssl", f"bind 127.0.0.1:{port} ssl")
    cfg = re.sub(r"\n    bind :::443 .*", "", cfg)
    cfg = cfg.replace("/etc/haproxy/certs/bot.example.com.pem", str(pem))
    cfg = replace_once(cfg, "log /dev/log local0", "log stderr format raw local0")
    for host, fake_port in zip(REPLICA_HOSTS, replicas.ports, strict=True):
        cfg = replace_once(cfg, f"{host}:8585", f"127.0.0.1:{fake_port}")
    (workdir / "haproxy.cfg").write_text(cfg)
    argv = [HAPROXY, "-db", "-f", str(workdir / "haproxy.cfg")]
    async with start_proxy("haproxy", argv, workdir, port) as proxy:
        yield proxy


PROXIES = {"nginx": nginx_in_front, "haproxy": haproxy_in_front}


@contextlib.asynccontextmanager
async def running(how: str) -> AsyncIterator[FakeReplicas]:
    replicas = FakeReplicas(how)
    await replicas.start()
    try:
        yield replicas
    finally:
        await replicas.stop()


async def in_two_parts(body: bytes) -> AsyncIterator[bytes]:
    """The body as the network may deliver it: a first part, a pause, the rest. A proxy
    that passes the body on as it comes has sent part of it before it has all of it."""
    yield body[: len(body) // 4]
    await asyncio.sleep(0.2)
    yield body[len(body) // 4 :]


async def post_through(proxy: RunningProxy, body: bytes, random: str) -> tuple[int, float]:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=3 * TALK_TIMEOUT_S)
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),  # as Talk sends it, not chunked
        "X-Nextcloud-Talk-Random": random,
    }
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(proxy.url, data=in_two_parts(body), headers=headers, ssl=False) as response,
    ):
        await response.read()
        return response.status, time.monotonic() - started


@pytest.mark.parametrize(
    "proxy",
    [
        pytest.param("nginx", marks=needs_nginx),
        pytest.param("haproxy", marks=needs_haproxy),
    ],
)
@pytest.mark.parametrize("how", ["503", "cut", "silent"])
async def test_a_webhook_one_replica_fails_reaches_the_other_whole_within_talks_timeout(
    proxy: str, how: str, tmp_path: Path
) -> None:
    body, random = talk_like_webhook(), "r" * 64
    async with running(how) as replicas, PROXIES[proxy](tmp_path, replicas) as front:
        status, took = await post_through(front, body, random)
        assert status == 200, front.tail()
    first, second = replicas.deliveries
    assert first.port != second.port  # the other replica, not the same one again
    assert first.body == second.body == body  # the whole body, sent again
    assert first.random == second.random == random  # so the store keeps one of the two
    assert took < TALK_TIMEOUT_S


@pytest.mark.parametrize(
    "proxy",
    [
        pytest.param("nginx", marks=needs_nginx),
        pytest.param("haproxy", marks=needs_haproxy),
    ],
)
async def test_a_refusal_the_other_replica_would_repeat_is_passed_back_at_once(
    proxy: str, tmp_path: Path
) -> None:
    """401: another bot_secret. The replicas share the config, so no retry."""
    async with running("401") as replicas, PROXIES[proxy](tmp_path, replicas) as front:
        status, _took = await post_through(front, talk_like_webhook(), "r" * 64)
    assert status == 401
    assert len(replicas.deliveries) == 1


@needs_nginx
def test_the_nginx_example_passes_nginx_t(tmp_path: Path) -> None:
    assert NGINX is not None
    cert, key = self_signed(tmp_path, "bot.example.com")
    site = NGINX_SITE.read_text()
    site = replace_once(site, "/etc/letsencrypt/live/bot.example.com/fullchain.pem", str(cert))
    site = replace_once(site, "/etc/letsencrypt/live/bot.example.com/privkey.pem", str(key))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n{temp_paths(tmp_path)}    include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(  # noqa: S603 - nginx's own config test
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@needs_haproxy
def test_the_haproxy_example_passes_haproxy_c_without_a_warning(tmp_path: Path) -> None:
    assert HAPROXY is not None
    cert, key = self_signed(tmp_path, "bot.example.com")
    pem = tmp_path / "bot.example.com.pem"
    pem.write_text(cert.read_text() + key.read_text())
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        HAPROXY_CFG.read_text().replace("/etc/haproxy/certs/bot.example.com.pem", str(pem))
    )
    result = subprocess.run(  # noqa: S603 - haproxy's own config check
        [HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


@pytest.mark.skipif(KEEPALIVED is None, reason="keepalived is not installed")
def test_the_keepalived_example_passes_keepalived_t(tmp_path: Path) -> None:
    assert KEEPALIVED is not None
    conf = tmp_path / "keepalived.conf"
    conf.write_text(block_after("/etc/keepalived/keepalived.conf").body)
    result = subprocess.run(  # noqa: S603 - keepalived's own config test
        [KEEPALIVED, "-t", "-f", str(conf)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""
