"""Prometheus metrics of one process, on a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter(
            "talkbot_webhooks",
            "Webhooks received, by event type and HTTP status",
            ["type", "status"],
            registry=r,
        )
        self.turns = Counter(
            "talkbot_turns",
            "Chat and scheduled turns finished, by outcome and the requester's role"
            " (over_quota: refused before the model was asked)",
            ["outcome", "role"],
            registry=r,
        )
        self.tokens = Counter(
            "talkbot_tokens",
            "Model tokens used, by the requester's role and kind (prompt, completion);"
            " estimated where the model server reported none",
            ["role", "kind"],
            registry=r,
        )
        self.turn_seconds = Histogram(
            "talkbot_turn_seconds",
            "Wall time of a chat turn",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
            registry=r,
        )
        self.llm_seconds = Histogram(
            "talkbot_llm_request_seconds",
            "Time of one model request",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80),
            registry=r,
        )
        self.llm_errors = Counter(
            "talkbot_llm_errors", "Model requests that failed, by kind", ["kind"], registry=r
        )
        self.tool_calls = Counter(
            "talkbot_tool_calls",
            "Tool calls, by tool and outcome",
            ["tool", "outcome"],
            registry=r,
        )
        self.talk_sends = Counter(
            "talkbot_talk_sends", "Bot API calls to Talk, by outcome", ["outcome"], registry=r
        )
        self.inbox_backlog = Gauge(
            "talkbot_inbox_backlog", "Accepted events not yet handled", registry=r
        )
        self.confirmations = Counter(
            "talkbot_confirmations",
            "Confirmation decisions, by outcome",
            ["outcome"],
            registry=r,
        )
        self.schedule_runs = Counter(
            "talkbot_schedule_runs", "Scheduled job runs, by outcome", ["outcome"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
