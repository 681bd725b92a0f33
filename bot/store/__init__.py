"""The one store: inbox, rooms, history, roles, confirmations, jobs, usage and audit.

Callers speak in the product's terms; nothing outside this package sees SQL. Each
aggregate is one module whose code serves both backends, with each dialect's SQL where
they differ: SQLite embedded (bot/store/sqlite.py, one process) or PostgreSQL
(bot/store/postgres.py, several replicas). Both run on bot/store/engine.py: one worker
thread owns the connection, writes of one loop tick share a commit, and a locked, full
or unreachable store never blocks the event loop (H04). The schema of both is one list
of numbered steps, bot/store/steps.py, run by bot/store/migrations.py (docs/store.md).
``Store`` itself is bot/store/facade.py; this module only re-exports.
"""

from bot.store.facade import Store
from bot.store.inbox import BODY_RETENTION_S, PURGE_CHUNK, ROW_RETENTION_S
from bot.store.records import (
    OPEN_ACTION_STATUSES,
    AuditEntry,
    HistoryEntry,
    InboxItem,
    JobRecord,
    NewPendingAction,
    PendingAction,
    RoleOverride,
    RoomRecord,
    RunRecord,
    StoreHealth,
    TokenCount,
    UsageSummary,
)
from bot.store.replicas import ReplicaRecord

__all__ = [
    "BODY_RETENTION_S",
    "OPEN_ACTION_STATUSES",
    "PURGE_CHUNK",
    "ROW_RETENTION_S",
    "AuditEntry",
    "HistoryEntry",
    "InboxItem",
    "JobRecord",
    "NewPendingAction",
    "PendingAction",
    "ReplicaRecord",
    "RoleOverride",
    "RoomRecord",
    "RunRecord",
    "Store",
    "StoreHealth",
    "TokenCount",
    "UsageSummary",
]
