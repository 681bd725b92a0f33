"""What is checked before the daemon starts (``serve`` and ``check``), and ``check``'s reports."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import structlog

from bot import USER_AGENT
from bot.clock import SystemClock
from bot.config import NextcloudSettings, Role, Settings, StorageSettings, config_warnings
from bot.errors import ConfigError, NextcloudError
from bot.logs import LogRing
from bot.nextcloud import Provisioning
from bot.scheduler import JobDelivery, Scheduler, check_schedules
from bot.store import Store
from bot.talk.client import TalkClient
from bot.tools.files import FILE_TOOLS, root_problem, root_refusal
from bot.tools.talk import RoomDirectory
from bot.tools.web import HttpFetcher
from bot.toolset import BuiltinToolDeps, build_tools

log = structlog.get_logger(__name__)


async def validate_deployment(settings: Settings) -> list[tuple[str, str]]:
    """What ``serve`` checks before it binds, beyond the config models; ``check`` runs it too.

    ConfigError names every problem together (schedule expressions, [tools] modules); the
    returned (field, reason) pairs are warnings: it starts, but probably not as meant.
    """
    problems: list[tuple[str, str]] = []
    try:
        check_schedules(settings.schedules, settings.chat.timezone)
    except ConfigError as exc:
        problems += exc.problems
    try:
        await _dry_run_tools(settings)
    except ConfigError as exc:
        problems += exc.problems
    problems += _files_root_refusal(settings)
    problems += _mcp_client_missing(settings)
    if problems:
        raise ConfigError(problems)
    return config_warnings(settings) + _files_warnings(settings)


def _mcp_client_missing(settings: Settings) -> list[tuple[str, str]]:
    if not settings.mcp.servers or importlib.util.find_spec("mcp") is not None:
        return []
    return [("mcp.servers", "the MCP client is not installed: pip install 'talkbot[mcp]'")]


def log_warnings(warnings: Sequence[tuple[str, str]]) -> None:
    for name, reason in warnings:
        log.warning("config.warning", field=name, reason=reason)


async def _no_turn(_room: str, _requester: str, _role: Role, _prompt: str, _tz: str) -> str:
    """The dry run's scheduler never fires a job."""
    raise RuntimeError("the dry run of the tools runs no scheduled turn")


async def _dry_run_tools(settings: Settings) -> None:
    """build_tools as the daemon calls it, on stand-ins that reach nobody: [tools] modules
    are imported and their make_tools run, so a broken one is found before anything starts."""
    clock = SystemClock()
    store = Store.open(Path(":memory:"), clock)
    session = aiohttp.ClientSession(trust_env=False, headers={"User-Agent": USER_AGENT})
    fetcher = HttpFetcher(settings.tools.http_fetch)
    talk = TalkClient(session, settings.nextcloud.url, "", clock=clock)  # never called
    delivery = JobDelivery(
        store=store, poster=talk, role_of=lambda _actor: "none", run_turn=_no_turn
    )
    deps = BuiltinToolDeps(
        scheduler=Scheduler(store, clock, delivery, default_timezone=settings.chat.timezone),
        rooms=RoomDirectory(store),
        poster=talk,
        session=session,
        fetcher=fetcher,
        ring=LogRing(),
        clock=clock,
        restart=lambda: None,
        admin_room=lambda: settings.access.admin_room,
    )
    try:
        build_tools(settings, deps)
    finally:
        await fetcher.aclose()
        await session.close()
        await store.close()


async def describe_account(nextcloud: NextcloudSettings, mapped: tuple[str, ...] = ()) -> str:
    """For ``talkbot check``: does Nextcloud take the service account, and which groups
    can it see (those it is group admin of)? One request; a 401 is not tried again.
    ``mapped`` are the groups of ``[access.groups]``: any it cannot see grants nothing."""
    async with aiohttp.ClientSession(
        trust_env=False, headers={"User-Agent": USER_AGENT}
    ) as session:
        api = Provisioning(
            session, nextcloud.url, nextcloud.user, nextcloud.app_password.get_secret_value()
        )
        try:
            account = await api.account()
        except NextcloudError as exc:
            return f"{nextcloud.user}: {exc}"
    if not account.subadmin_of:
        text = f"{account.id}: accepted, but group admin of no group, so it sees none"
    else:
        text = (
            f"{account.id}: accepted; sees the groups it manages: {', '.join(account.subadmin_of)}"
        )
    unseen = [group for group in mapped if group not in account.subadmin_of]
    if unseen:
        text += (
            f"; mapped in [access.groups] but not visible, so they grant nothing:"
            f" {', '.join(unseen)} (make {account.id} their group admin)"
        )
    return text


async def describe_mcp_servers(settings: Settings) -> list[tuple[str, str]]:
    """For ``talkbot check``: connect to each MCP server once, say what it would offer."""
    if not settings.mcp.servers:
        return []
    from bot.tools.mcp import probe  # noqa: PLC0415 - optional, and 0.4 s to import

    states = await asyncio.gather(*(probe(server) for server in settings.mcp.servers))
    return [
        (server.name, state) for server, state in zip(settings.mcp.servers, states, strict=True)
    ]


def describe_store(storage: StorageSettings) -> str:
    """For ``talkbot check``: where the store is and whether it can be used; no change."""
    if storage.backend == "sqlite":
        state = "exists" if storage.path.exists() else "created at the first start"
        return f"SQLite at {storage.path} ({state})"
    try:
        from bot.store.postgres import describe  # noqa: PLC0415 - optional dependency
    except ImportError:
        return "PostgreSQL: psycopg is missing: pip install 'talkbot[postgres]'"
    return describe(storage.url, storage.password.get_secret_value() or None)


def _files_root_refusal(settings: Settings) -> list[tuple[str, str]]:
    """A files root within reach of the config, a secret file or the store is refused."""
    if not any(settings.tools.policy(name).enabled is not False for name in FILE_TOOLS):
        return []
    store = [settings.storage.path] if settings.storage.backend == "sqlite" else []
    protected = [*settings.source_files, *store]
    refusal = root_refusal(Path(settings.tools.files.root), protected)
    return [("tools.files.root", refusal)] if refusal else []


def _files_warnings(settings: Settings) -> list[tuple[str, str]]:
    offered = any(settings.tools.policy(name).enabled is not False for name in FILE_TOOLS)
    problem = root_problem(settings.tools.files) if offered else None
    return [("tools.files.root", problem)] if problem else []
