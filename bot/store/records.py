"""What the store keeps, in the product's terms: the records its callers read and write."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InboxItem:
    id: int
    room: str
    kind: str
    body: bytes
    received_at: float
    attempts: int


@dataclass(frozen=True)
class RoomRecord:
    token: str
    name: str
    one_to_one: bool
    mode: str | None
    joined: bool
    last_seen: float


@dataclass(frozen=True)
class HistoryEntry:
    role: str  # "user" | "assistant" | "tool" | "note"
    content: str
    actor_id: str = ""
    actor_name: str = ""
    message_id: str | None = None
    created_at: float = 0.0
    # Where the text came from beyond its role: "" (clean) or labels like "untrusted",
    # "private,untrusted" (bot/agent/history.py reads them; docs/store.md, version 6).
    provenance: str = ""


@dataclass(frozen=True)
class RoleOverride:
    uid: str
    role: str
    set_by: str
    set_at: float


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor: str
    room: str
    action: str
    tool: str
    args_hash: str
    outcome: str
    detail: str


# A pending action's status: pending -> approved -> running -> done | failed; pending ->
# denied | expired | cancelled. Every change is a compare-and-set on the status (A08).
# These statuses still hold the action's code (it is not finished).
OPEN_ACTION_STATUSES = ("pending", "approved", "running")


@dataclass(frozen=True)
class NewPendingAction:
    """One dangerous call to park: exactly this tool with exactly these canonical args."""

    code: str
    turn_id: str
    call_id: str
    room: str
    requester: str
    requester_name: str
    tool: str
    args_json: str
    args_hash: str
    approver: str
    state_json: str
    after_message_id: str
    expires_at: float


@dataclass(frozen=True, kw_only=True)
class PendingAction(NewPendingAction):
    """A stored pending action (a confirmation) in whatever state it is now."""

    id: int
    prompt_text: str
    created_at: float
    status: str
    decided_by: str
    result_text: str
    updated_at: float
    prompted: bool = True  # its prompt was posted (or the post was tried)


@dataclass(frozen=True)
class JobRecord:
    """A scheduled job as persisted; the scheduler gives the fields their meaning."""

    id: str
    owner: str  # actor id of the creator, or "config"
    room: str
    kind: str  # "cron" | "every" | "at"
    expr: str
    timezone: str
    message: str | None
    prompt: str | None
    created_by_role: str
    paused: bool
    misfire: str  # "once" | "skip"
    source: str  # "config" | "chat" | "admin"
    created_at: float
    active_since: float  # fire times before this are neither run nor caught up
    origin_room: str = ""  # where it was made; "" for the config's jobs


@dataclass(frozen=True)
class RunRecord:
    """One row of the run ledger: a job's fire time and what became of it."""

    job_id: str
    fire_time: int  # epoch seconds
    status: str  # "running" | "done" | "failed" | "skipped" | "interrupted"
    started_at: float
    finished_at: float | None
    detail: str


@dataclass(frozen=True)
class StoreHealth:
    """Whether the store's last commit went through; if not, since when and why."""

    ok: bool
    since: float  # clock time of the last change
    reason: str = ""


@dataclass(frozen=True)
class TokenCount:
    """Model tokens of one day (a person's, a room's, or all), summed over turns."""

    prompt: int = 0
    completion: int = 0
    turns: int = 0
    estimated: bool = False  # some of it was estimated: a server sent no figures

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(frozen=True)
class UsageSummary:
    """One day's tokens: the whole, and the people and rooms that used the most."""

    total: TokenCount
    people: tuple[tuple[str, TokenCount], ...]  # (person, tokens), most first
    rooms: tuple[tuple[str, TokenCount], ...]  # (room token, tokens), most first
