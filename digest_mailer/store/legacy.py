"""The SQLite ledger's schema before Alembic (schema 1 to 3, `PRAGMA user_version`): what
brings a ledger of schema 1 or 2 to 3, from where Alembic's baseline revision takes over. Every
statement is idempotent; the columns versions 1 and 2 lacked are in COLUMNS, added where
missing. Frozen: new changes are Alembic revisions (store/migrations/versions/)."""

from __future__ import annotations

LEGACY_SCRIPT = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    run_date    TEXT NOT NULL,
    origin      TEXT NOT NULL,
    fetched     INTEGER NOT NULL DEFAULT 0,
    sent        INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT NOT NULL DEFAULT 'running',
    pid         INTEGER,
    host        TEXT,
    cause       TEXT,
    hold_until  REAL NOT NULL DEFAULT 0,
    trouble     INTEGER NOT NULL DEFAULT 0,
    blocked     INTEGER NOT NULL DEFAULT 0
);
-- Schema 3: the outbox is the work queue. A run adopts the open rows (owner_run), senders claim
-- them (claimed_by, lease_until: on a server database the same claim is SELECT ... FOR UPDATE
-- SKIP LOCKED, and an expired lease frees a row); next_try is when a row may be tried again
-- (NULL: parked for the next run), tries counts this run's attempts. A run records its process
-- (to tell a dead one) and, while it is blocked, the cause and when the server is tried again.
CREATE TABLE IF NOT EXISTS papers (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    upvotes    INTEGER NOT NULL,
    listed_on  TEXT,
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER REFERENCES runs(id),
    subscriber TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    subject    TEXT NOT NULL,
    sent_at    TEXT NOT NULL,
    papers     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_subscriber ON deliveries(subscriber, sent_at);
CREATE TABLE IF NOT EXISTS offers (
    subscriber  TEXT NOT NULL,
    paper_id    TEXT NOT NULL,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    included    INTEGER NOT NULL,
    PRIMARY KEY (subscriber, paper_id)
) WITHOUT ROWID;
-- Schema 2: the outbox and the suppression list. A message is its digest template (stored once
-- for everyone who shares it) and the few values that make it one subscriber's.
CREATE TABLE IF NOT EXISTS outbox_sets (
    id         INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    template   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER REFERENCES runs(id),
    set_id          INTEGER,
    subscriber      TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    name            TEXT NOT NULL,
    unsubscribe_url TEXT NOT NULL,
    token           TEXT NOT NULL,
    message_id      TEXT NOT NULL UNIQUE,
    subject         TEXT NOT NULL,
    envelope_from   TEXT NOT NULL,
    included        TEXT NOT NULL,
    offered       TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    owner_run     INTEGER,
    next_try      REAL,
    tries         INTEGER NOT NULL DEFAULT 0,
    claimed_by    TEXT,
    lease_until   REAL
);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox(state, subscriber)
    WHERE state IN ('pending', 'sending', 'deferred');
CREATE INDEX IF NOT EXISTS outbox_subscriber ON outbox(subscriber, id);
CREATE INDEX IF NOT EXISTS outbox_claim ON outbox(owner_run, state, id);
CREATE TABLE IF NOT EXISTS suppressions (
    subscriber TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    since      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
"""

# Columns added after a table's first version: (table, column, definition).
COLUMNS = (
    ("runs", "pid", "INTEGER"),
    ("runs", "host", "TEXT"),
    ("runs", "cause", "TEXT"),
    ("runs", "hold_until", "REAL NOT NULL DEFAULT 0"),
    ("runs", "trouble", "INTEGER NOT NULL DEFAULT 0"),
    ("runs", "blocked", "INTEGER NOT NULL DEFAULT 0"),
    ("outbox", "owner_run", "INTEGER"),
    ("outbox", "next_try", "REAL"),
    ("outbox", "tries", "INTEGER NOT NULL DEFAULT 0"),
    ("outbox", "claimed_by", "TEXT"),
    ("outbox", "lease_until", "REAL"),
)
