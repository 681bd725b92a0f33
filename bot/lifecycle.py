"""The daemon's lifetime: start the parts, drain and close them, and its HTTP routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from bot import __version__
from bot.access import stored_roles
from bot.app import build_parts
from bot.errors import StoreError
from bot.metrics import CONTENT_TYPE
from bot.reloading import reload_settings, use_mcp_servers
from bot.replicas import Duties
from bot.runtime import RUNTIME, Parts, Runtime
from bot.store import Store
from bot.talk.client import TalkClient
from bot.talk.poster import Poster

log = structlog.get_logger(__name__)

STOP_DEADLINE_S = 60.0
# Retention counts days (store/inbox.py), so a few purges a day suffice; the first runs at
# start, and a stop cancels the wait (close_parts), so the interval never delays one.
HOUSEKEEPING_INTERVAL_S = 6 * 3600
# /readyz waits this long for the store to answer a query before calling it unresponsive.
READYZ_STORE_TIMEOUT_S = 1.0


async def housekeep(
    store: Store,
    interval_s: float = HOUSEKEEPING_INTERVAL_S,
    *,
    expire_stale: Callable[[], Awaitable[int]] | None = None,
) -> None:
    """Old inbox bodies and rows go, every few hours; actions left waiting past their
    expiry are marked expired (``expire_stale``), then decided actions' paused turns go.
    A failure is logged and tried again later."""
    steps: list[Callable[[], Awaitable[object]]] = [store.purge, store.purge_pending]
    if expire_stale is not None:
        steps.insert(1, expire_stale)  # before the purge of decided actions: it decides
    while True:
        for step in steps:  # each on its own: one failing does not hold up the others
            try:
                await step()
            except Exception:
                log.exception(
                    "store.housekeeping_failed", step=getattr(step, "__name__", repr(step))
                )
        await asyncio.sleep(interval_s)


async def drain(runtime: Runtime) -> None:
    """Finish or park the work in progress while the port still takes webhooks: what
    arrives meanwhile is stored and answered 200 at once, and left pending for the next
    process (a long turn at a restart must not make Talk's 5 s run out). Closing the
    parts afterwards finds nothing left to wait for."""
    parts = runtime.parts
    if parts is None:
        return
    await parts.tool_deps.fetcher.stop_converting()
    await parts.scheduler.stop()
    await parts.dispatcher.stop(STOP_DEADLINE_S)
    await parts.coordinator.stop()  # its rooms go to the other replicas at once


async def close_parts(parts: Parts) -> None:
    if parts.housekeeping is not None:
        parts.housekeeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await parts.housekeeping
    # First the work stops, in this order...
    await parts.tool_deps.fetcher.stop_converting()  # a hostile page never holds the stop (H01)
    await parts.scheduler.stop()
    await parts.dispatcher.stop(STOP_DEADLINE_S)
    await parts.coordinator.stop()
    if parts.mcp is not None:
        await parts.mcp.aclose()
    # ...then every resource closes, the last opened first (build_parts registered them).
    await parts.resources.aclose()


async def start_parts(runtime: Runtime, parts: Parts, *, schedules: bool = True) -> None:
    """Put built parts to work: recover confirmations, resume the inbox, arm the schedules.

    The console passes ``schedules=False``: scheduled posts belong in Talk, not a terminal.
    """
    runtime.parts = parts
    runtime.started_at = runtime.clock.now()
    runtime.redactor.add_secrets(runtime.settings.secret_values())
    # Before the inbox resumes: never re-run (A10).
    await parts.approvals.recover_interrupted(await parts.coordinator.alive())
    await parts.coordinator.start(replica_duties(runtime, parts))
    use_mcp_servers(runtime, parts, runtime.settings)  # connect in the background
    await parts.dispatcher.start()
    if schedules:
        alive = await parts.coordinator.alive()
        await parts.scheduler.start(runtime.settings.schedules, alive=alive)
    parts.housekeeping = asyncio.create_task(
        housekeep(parts.store, expire_stale=parts.approvals.expire_stale), name="housekeeping"
    )


def replica_duties(runtime: Runtime, parts: Parts) -> Duties:
    """What this replica does for the others (only with a shared store): take up rooms,
    reload what changed elsewhere, fail what a dead replica left approved or running."""

    async def reload(topic: str) -> None:
        if topic == "roles":
            parts.access.replace_overrides(stored_roles(await parts.store.role_overrides()))
        elif topic == "jobs":
            await parts.scheduler.rearm()
        elif topic == "config":
            log.info("config.reload_requested", outcome=await reload_settings(runtime))

    async def recover(alive: list[str]) -> None:
        await parts.approvals.recover_interrupted(alive)
        await parts.scheduler.interrupt_runs(alive)

    return Duties(sweep=parts.dispatcher.sweep, reload=reload, recover=recover)


def build_app(
    runtime: Runtime, *, poster_factory: Callable[[TalkClient], Poster] | None = None
) -> web.Application:
    """The aiohttp application; its cleanup context owns every part's lifetime."""
    settings = runtime.settings
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[RUNTIME] = runtime

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await start_parts(runtime, await build_parts(runtime, poster_factory=poster_factory))
        log.info("talkbot.started", version=__version__, webhook=settings.server.webhook_path)
        yield
        log.info("talkbot.stopping")
        await close_parts(runtime.running)
        runtime.parts = None

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(settings.server.webhook_path, _webhook)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _webhook(request: web.Request) -> web.Response:
    return await request.app[RUNTIME].running.webhook.handle(request)


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    parts = runtime.parts
    if parts is None:
        return web.json_response({"ready": False, "store": "closed"}, status=503)
    store = await _store_readiness(parts.store)
    ready = parts.scheduler.running and store["store"] == "open"
    body = {
        "ready": ready,
        "version": __version__,
        "uptime_s": round(runtime.clock.now() - runtime.started_at, 3),
        **store,
        "scheduler": "running" if parts.scheduler.running else "stopped",
        "turns_in_progress": parts.dispatcher.backlog,
        "last_webhook_at": parts.webhook.last_webhook_at,
        "send_failures": parts.talk.failures,
        "last_send_error": parts.talk.last_error,
        "last_send_error_at": parts.talk.last_error_at,
        # A server that fails never makes the daemon unready: its tools are just not offered.
        "mcp_servers": {
            state.name: {"state": state.state, "reason": state.reason or None}
            for state in (parts.mcp.states() if parts.mcp is not None else [])
        },
    }
    return web.json_response(body, status=200 if ready else 503)


async def _store_readiness(store: Store) -> dict[str, Any]:
    """Whether the store commits (its health) and answers a query in time (H04)."""
    health = store.health
    try:  # a query: the store answers, not just "open"
        backlog: int | None = await asyncio.wait_for(store.inbox_backlog(), READYZ_STORE_TIMEOUT_S)
    except (TimeoutError, StoreError):
        backlog = None
    state = "open" if health.ok else "unavailable"
    if backlog is None:
        state = "unresponsive"
    return {
        "store": state,
        "store_error": None if health.ok else health.reason,
        "store_down_since": None if health.ok else health.since,
        "inbox_backlog": backlog,
    }


async def _metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.parts is not None:
        runtime.metrics.inbox_backlog.set(await runtime.parts.store.inbox_backlog())
    return web.Response(body=runtime.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
