"""Injected crashes at the tricky spots, so the chaos tests can reach them on purpose.

The environment variable ``TALKBOT_CRASH_AT`` names one point:

    TALKBOT_CRASH_AT=before_reply      die the first time the point is reached
    TALKBOT_CRASH_AT=before_reply:3    die the third time it is reached in this process

Dying is ``os._exit(137)``: no cleanup, no flush, no finally blocks, like ``kill -9``
(137 = 128 + SIGKILL). The variable is read once, at import; unset (every real
deployment), a crash point costs one comparison. An unknown point or a bad count is a
ValueError at import, so a typo in a test fails loudly instead of never crashing.

The points, in the order a message or a job passes them:

    after_accept        webhook: the event is committed to the inbox, the 200 not sent
    turn_started        dispatcher: the event is marked running, its handler not called
    before_reply        chat: the model answered, the reply is not posted yet
    before_event_done   dispatcher: the handler returned, the event is not marked done
    before_batch_done   dispatcher: events that needed no turn were handled, the one
                        statement marking them done is not committed yet
    tool_running        confirmations: the action is marked running, the tool not called
    tool_ran            confirmations: the tool ran, the action is not marked done
    schedule_claimed    scheduler: the fire time is in the run ledger, nothing delivered
    schedule_delivered  scheduler: delivered, the run not marked done
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

ENV = "TALKBOT_CRASH_AT"
EXIT_CODE = 137
POINTS = frozenset(
    {
        "after_accept",
        "turn_started",
        "before_reply",
        "before_event_done",
        "before_batch_done",
        "tool_running",
        "tool_ran",
        "schedule_claimed",
        "schedule_delivered",
    }
)


@dataclass
class CrashPlan:
    """Where this process dies: the ``hit``-th time it reaches ``point``."""

    point: str
    hit: int
    reached: int = 0


def parse_plan(value: str) -> CrashPlan | None:
    """``name`` or ``name:N`` as a plan; None for an empty value."""
    value = value.strip()
    if not value:
        return None
    point, sep, count = value.partition(":")
    if point not in POINTS:
        raise ValueError(f"{ENV}: unknown crash point {point!r}; known: {sorted(POINTS)}")
    if not sep:
        return CrashPlan(point, 1)
    if not (count.isascii() and count.isdigit() and int(count) >= 1):
        raise ValueError(f"{ENV}: the count after ':' must be a whole number >= 1")
    return CrashPlan(point, int(count))


_plan = parse_plan(os.environ.get(ENV, ""))


def crash_point(name: str) -> None:
    """End the process here, at once, when ``TALKBOT_CRASH_AT`` names this point."""
    plan = _plan
    if plan is None or plan.point != name:
        return
    plan.reached += 1
    if plan.reached >= plan.hit:
        log.warning("crash_point.exit", point=name, hit=plan.reached)
        os._exit(EXIT_CODE)
