"""The store's schema steps, frozen: each released step's SQL, verbatim and append-only.

Step N takes a store from version N-1 to N (bot/store/migrations.py runs them). Never
edit, reorder or remove a released step, and never build one from the SQL the rest of
the code uses today: append a new one (docs/store.md says how).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One step: frozen SQL statements, run in order inside the upgrade's transaction.

    ``statements`` are SQLite's; ``postgres`` the same step in PostgreSQL's dialect. Steps
    up to POSTGRES_BASELINE (postgres_baseline.py) have none: a PostgreSQL store starts there.
    """

    summary: str
    statements: tuple[str, ...]
    postgres: tuple[str, ...] = ()

    def apply(self, db: sqlite3.Connection) -> None:
        for statement in self.statements:
            db.execute(statement)


# -- the steps: frozen, append-only ------------------------------------------------------

# 1: the first store (7eb563e), verbatim.
_FIRST_STORE = (
    """
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    error TEXT
)""",
    "CREATE INDEX inbox_open ON inbox (status, room, id)",
    """
CREATE TABLE seen_randoms (
    random TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
)""",
    """
CREATE TABLE rooms (
    token TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    one_to_one INTEGER NOT NULL DEFAULT 0,
    mode TEXT,
    joined INTEGER NOT NULL DEFAULT 1,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
)""",
    """
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    role TEXT NOT NULL,
    actor_id TEXT NOT NULL DEFAULT '',
    actor_name TEXT NOT NULL DEFAULT '',
    content TEXT NOT NULL,
    message_id TEXT,
    created_at REAL NOT NULL
)""",
    "CREATE INDEX history_room ON history (room, id)",
    """
CREATE TABLE role_overrides (
    uid TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    set_by TEXT NOT NULL,
    set_at REAL NOT NULL
)""",
    """
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    room TEXT NOT NULL,
    action TEXT NOT NULL,
    tool TEXT NOT NULL DEFAULT '',
    args_hash TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
)""",
    """
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
)""",
)

# 2: pending actions (confirmations), jobs and their run ledger (328d4dd), verbatim.
_CONFIRMATIONS_AND_JOBS = (
    """
CREATE TABLE pending_actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    room TEXT NOT NULL,
    requester TEXT NOT NULL,
    requester_name TEXT NOT NULL DEFAULT '',
    tool TEXT NOT NULL,
    args_json TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    approver TEXT NOT NULL,
    state_json TEXT NOT NULL,
    after_message_id TEXT NOT NULL DEFAULT '',
    prompt_text TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    decided_by TEXT NOT NULL DEFAULT '',
    result_text TEXT NOT NULL DEFAULT '',
    resumed INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
)""",
    """CREATE UNIQUE INDEX pending_actions_open_code ON pending_actions (code)
    WHERE status IN ('pending', 'approved', 'running')""",
    "CREATE INDEX pending_actions_room ON pending_actions (room, status)",
    "CREATE INDEX pending_actions_turn ON pending_actions (turn_id)",
    """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    room TEXT NOT NULL,
    kind TEXT NOT NULL,
    expr TEXT NOT NULL,
    timezone TEXT NOT NULL,
    message TEXT,
    prompt TEXT,
    created_by_role TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    misfire TEXT NOT NULL DEFAULT 'once',
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    active_since REAL NOT NULL
)""",
    "CREATE INDEX jobs_owner ON jobs (owner, id)",
    """
CREATE TABLE job_runs (
    job_id TEXT NOT NULL,
    fire_time INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, fire_time)
)""",
)

# 3: the inbox keeps each webhook's random in a UNIQUE column; seen_randoms goes (eb7c8fc).
# SQLite adds no UNIQUE column in place, so the table is rebuilt with eb7c8fc's text.
# The old table is renamed out of the way first: renaming the new one instead would store
# its name quoted. No view, trigger or foreign key refers to inbox.
# Ids and the AUTOINCREMENT counter carry over (an id is never given out twice); each
# seen random becomes a finished row of kind 'seen' with no body, which the dedupe finds
# and open_events never returns.
_INBOX_RANDOM = (
    "ALTER TABLE inbox RENAME TO inbox_before_v3",
    """
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,
    random TEXT UNIQUE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    error TEXT
)""",
    "INSERT INTO sqlite_sequence (name, seq)"
    " SELECT 'inbox', seq FROM sqlite_sequence WHERE name = 'inbox_before_v3'",
    "INSERT INTO inbox (id, room, dedupe_key, random, kind, body, received_at, status,"
    " attempts, finished_at, error) SELECT id, room, dedupe_key, NULL, kind, body,"
    " received_at, status, attempts, finished_at, error FROM inbox_before_v3 ORDER BY id",
    "INSERT INTO inbox (room, random, kind, body, received_at, status, finished_at)"
    " SELECT '', random, 'seen', '', seen_at, 'done', seen_at FROM seen_randoms"
    " ORDER BY seen_at, random",
    "DROP TABLE inbox_before_v3",
    "DROP TABLE seen_randoms",
    "CREATE INDEX inbox_open ON inbox (status, room, id)",
)

# 4: the unused counters table goes (492e774).
_NO_COUNTERS = ("DROP TABLE counters",)

# 5: each job records the room it was made in (#13.4): a prompt job runs only there unless
# an admin made it for another room. Jobs from before had no such record; each is taken
# as made where it posts ('' for the config's, which no room made). An index lists a
# room's jobs for its moderators.
_JOB_ORIGIN_ROOM = (
    "ALTER TABLE jobs ADD COLUMN origin_room TEXT NOT NULL DEFAULT ''",
    "UPDATE jobs SET origin_room = room WHERE source != 'config'",
    "CREATE INDEX jobs_room ON jobs (room, id)",
)

# 6: each history row says where its text came from (#13): "" clean, or "untrusted" /
# "private" labels. Rows from before could not tell: tool rows (pages, files, logs) and
# answers written right after them in the same room count as untrusted; the rest as clean.
_HISTORY_PROVENANCE = (
    "ALTER TABLE history ADD COLUMN provenance TEXT NOT NULL DEFAULT ''",
    "UPDATE history SET provenance = 'untrusted' WHERE role = 'tool'",
    """UPDATE history SET provenance = 'untrusted' WHERE role = 'assistant' AND (
    SELECT before.role FROM history AS before
    WHERE before.room = history.room AND before.id < history.id
    ORDER BY before.id DESC LIMIT 1) = 'tool'""",
)

# 7: replays stay dropped after their inbox rows are purged (#14.3): per room, the highest
# Talk message id among purged messages. Talk's message ids only grow, so a message at or
# below it was accepted long ago; the floor does not depend on the clock.
_REPLAY_FLOOR = ("CREATE TABLE replay_floor (room TEXT PRIMARY KEY, message_id INTEGER NOT NULL)",)

# 8: replicas on one PostgreSQL database (#15). ``replicas``: each running process and
# when it last said it is alive (``!status``). ``room_leases``: which replica serves a
# room's turns, until when (renewed while it lives, taken over once it expires).
# ``revisions``: a counter per kind of shared setting (roles, jobs, config) that a change
# raises, so the other replicas reload it. ``runner`` on pending actions and job runs:
# the replica that approved or started it; only a dead runner's work is "interrupted".
# ``prompted`` on pending actions: whether its prompt was posted (0 from its creation
# until the post was tried; the actions stored before were all posted).
_REPLICAS = (
    """
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL
)""",
    """
CREATE TABLE room_leases (
    room TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
)""",
    "CREATE TABLE revisions (topic TEXT PRIMARY KEY, revision INTEGER NOT NULL)",
    "ALTER TABLE pending_actions ADD COLUMN runner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE job_runs ADD COLUMN runner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE pending_actions ADD COLUMN prompted INTEGER NOT NULL DEFAULT 1",
)
_REPLICAS_POSTGRES = (
    """
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL
)""",
    """
CREATE TABLE room_leases (
    room TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
)""",
    "CREATE TABLE revisions (topic TEXT PRIMARY KEY, revision BIGINT NOT NULL)",
    "ALTER TABLE pending_actions ADD COLUMN runner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE job_runs ADD COLUMN runner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE pending_actions ADD COLUMN prompted INTEGER NOT NULL DEFAULT 1",
)

# 9: model tokens per day, person and room (#16): what ``!usage`` shows and the daily
# quotas of ``[limits]`` count. ``day`` is the date in ``[chat] timezone`` (YYYY-MM-DD);
# ``estimated`` is 1 once any of a row's figures was estimated (a server sent none).
_TOKEN_USAGE = (
    """
CREATE TABLE token_usage (
    day TEXT NOT NULL,
    person TEXT NOT NULL,
    room TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, person, room)
)""",
    "CREATE INDEX token_usage_room ON token_usage (day, room)",
)
_TOKEN_USAGE_POSTGRES = (
    """
CREATE TABLE token_usage (
    day TEXT NOT NULL,
    person TEXT NOT NULL,
    room TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    turns BIGINT NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, person, room)
)""",
    "CREATE INDEX token_usage_room ON token_usage (day, room)",
)

# 10: fewer pages per webhook (#19). The inbox had two UNIQUE keys, the dedupe key and the
# random; every insert updated both indexes. Now one: ``dedupe_key`` is the event's own key
# where it has one (a replayed request carries the same body, so the same key) and
# ``random:<random>`` where only the random can tell (Join, Leave, ...). Rows stored before
# with neither get ``row:<id>``, which no webhook can produce. ``inbox_open`` becomes a
# partial index of the open events only (a few rows, not every event ever received).
# SQLite drops no UNIQUE constraint in place: the table is rebuilt as in step 3.
_ONE_DEDUPE_KEY = (
    "DROP INDEX inbox_open",
    "ALTER TABLE inbox RENAME TO inbox_before_v10",
    """
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    dedupe_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    error TEXT
)""",
    "INSERT INTO sqlite_sequence (name, seq)"
    " SELECT 'inbox', seq FROM sqlite_sequence WHERE name = 'inbox_before_v10'",
    "INSERT INTO inbox (id, room, dedupe_key, kind, body, received_at, status, attempts,"
    " finished_at, error) SELECT id, room,"
    " coalesce(dedupe_key, 'random:' || random, 'row:' || id), kind, body, received_at,"
    " status, attempts, finished_at, error FROM inbox_before_v10 ORDER BY id",
    "DROP TABLE inbox_before_v10",
    "CREATE INDEX inbox_open ON inbox (room, id) WHERE status IN ('pending', 'running')",
)
_ONE_DEDUPE_KEY_POSTGRES = (
    "UPDATE inbox SET dedupe_key = coalesce('random:' || random, 'row:' || id)"
    " WHERE dedupe_key IS NULL",
    "ALTER TABLE inbox ALTER COLUMN dedupe_key SET NOT NULL",
    "ALTER TABLE inbox DROP COLUMN random",
    "DROP INDEX inbox_open",
    "CREATE INDEX inbox_open ON inbox (room, id) WHERE status IN ('pending', 'running')",
)

# 11: housekeeping finds the bodies that are due by an index, not by a scan (#19). The
# purge empties the bodies of finished events after 14 days and keeps the rows for 180:
# looking for the next bodies in id order walked every row emptied before (months of
# them) for each chunk of 500, a quarter of a second per chunk at 20,000 messages a day,
# on the store's one thread. The index holds only the rows that still have a body.
_BODIES_INDEX = ("CREATE INDEX inbox_bodies ON inbox (received_at) WHERE body != ''",)

MIGRATIONS: tuple[Migration, ...] = (
    Migration("the first store: inbox, rooms, history, roles, audit", _FIRST_STORE),
    Migration("pending actions, jobs and job runs", _CONFIRMATIONS_AND_JOBS),
    Migration("the inbox keeps each webhook's random", _INBOX_RANDOM),
    Migration("the unused counters table goes", _NO_COUNTERS),
    Migration("jobs record the room they were made in", _JOB_ORIGIN_ROOM),
    Migration("history rows record where their text came from", _HISTORY_PROVENANCE),
    Migration("replays stay dropped after the inbox purge", _REPLAY_FLOOR),
    Migration("replicas, room leases, revisions, runners", _REPLICAS, _REPLICAS_POSTGRES),
    Migration("tokens per day, person and room", _TOKEN_USAGE, _TOKEN_USAGE_POSTGRES),
    Migration(
        "one dedupe key per webhook, an index of open events",
        _ONE_DEDUPE_KEY,
        _ONE_DEDUPE_KEY_POSTGRES,
    ),
    Migration("an index of the inbox rows that still have a body", _BODIES_INDEX, _BODIES_INDEX),
)
