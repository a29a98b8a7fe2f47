"""The ledger's tables. Every statement is idempotent, so migrating runs the whole script."""

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    run_date    TEXT NOT NULL,
    origin      TEXT NOT NULL,
    fetched     INTEGER NOT NULL DEFAULT 0,
    sent        INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT NOT NULL DEFAULT 'running'
);
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
    updated_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox(state, subscriber)
    WHERE state IN ('pending', 'sending', 'deferred');
CREATE INDEX IF NOT EXISTS outbox_subscriber ON outbox(subscriber, id);
CREATE TABLE IF NOT EXISTS suppressions (
    subscriber TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    since      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
"""
