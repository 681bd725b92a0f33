"""``!status``: what the running daemon says about itself; never a secret."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.config import Settings, strip_credentials
from bot.directory import Directory
from bot.handlers.admin import uptime_text
from bot.i18n import N_, _
from bot.replicas import Coordinator
from bot.runtime import Parts, Runtime
from bot.scheduler import Scheduler
from bot.store import StoreHealth


async def status_facts(runtime: Runtime) -> dict[str, Any]:
    """What !status shows; never a secret. The keys are msgids: !status translates them."""
    parts, settings = runtime.running, runtime.settings
    rooms = await parts.store.list_rooms()
    pending = await parts.approvals.unfinished()  # as !pending lists them
    return {
        N_("uptime"): uptime_text(runtime.started_at, runtime.clock.now()),
        N_("store"): _store_fact(parts.store.health),
        N_("replicas"): await _replicas_fact(parts.coordinator, runtime.clock.now()),
        N_("model"): _("{model} at {url}").format(
            model=settings.llm.model, url=strip_credentials(settings.llm.base_url)
        ),
        N_("rooms"): sum(1 for room in rooms if room.joined),
        N_("turns since start"): int(sum(_samples(runtime.metrics.turns))),
        # Waiting only: the command asking is itself in the inbox, running.
        N_("inbox backlog"): await parts.store.inbox_backlog(waiting_only=True),
        N_("pending confirmations"): len(pending),
        N_("mcp servers"): _mcp_fact(parts),
        N_("nextcloud account"): _directory_fact(parts.directory, settings),
        N_("next scheduled runs"): await _next_runs(parts.scheduler),
        N_("last webhook"): parts.webhook.last_webhook_at,
        N_("send failures"): parts.talk.failures,
        N_("last send error"): parts.talk.last_error,
    }


async def _replicas_fact(coordinator: Coordinator, now: float) -> str:
    if not coordinator.shared:
        return _("this process only (SQLite)")
    seen = []
    for replica in await coordinator.replicas():
        ago = (
            _("this one")
            if replica.id == coordinator.me.id
            else _("seen {seconds} s ago").format(seconds=f"{now - replica.seen_at:.0f}")
        )
        seen.append(f"{replica.id} ({ago})")
    return f"{len(seen)}: {', '.join(seen)}"


def _directory_fact(directory: Directory, settings: Settings) -> str:
    health = directory.health()
    if health.state == "unused":
        return "none (roles from the config only)"
    if health.state == "ok":
        return f"{settings.nextcloud.user}: groups of {health.people} people known"
    assert health.since is not None  # noqa: S101 - set with every failure
    when = datetime.fromtimestamp(health.since, UTC)
    return (
        f"{settings.nextcloud.user}: {health.state} since {when:%Y-%m-%d %H:%M:%S} UTC"
        f" ({health.reason}); known groups kept {settings.nextcloud.groups_stale_s} s,"
        " then config roles"
    )


def _mcp_fact(parts: Parts) -> str:
    states = parts.mcp.states() if parts.mcp is not None else []
    if not states:
        return _("none")
    ready = sum(1 for state in states if state.state == "ready")
    down = [state.name for state in states if state.state != "ready"]
    text = _("{ready} of {count} connected").format(ready=ready, count=len(states))
    if down:
        text += _("; not connected: {names} (see `!tools`)").format(names=", ".join(down))
    return text


def _store_fact(health: StoreHealth) -> str:
    if health.ok:
        return _("saving")
    when = datetime.fromtimestamp(health.since, UTC)
    return _("cannot save since {when} UTC: {reason}").format(
        when=f"{when:%Y-%m-%d %H:%M:%S}", reason=health.reason
    )


async def _next_runs(scheduler: Scheduler, count: int = 3) -> str:
    upcoming = sorted(
        (fire, job.id)
        for job in await scheduler.jobs()
        if (fire := scheduler.next_fire_time(job)) is not None
    )[:count]
    when = [
        f"{job_id} {datetime.fromtimestamp(fire, UTC):%Y-%m-%d %H:%M} UTC"
        for fire, job_id in upcoming
    ]
    return ", ".join(when) or _("none")


def _samples(counter: Any) -> list[float]:
    return [
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    ]
