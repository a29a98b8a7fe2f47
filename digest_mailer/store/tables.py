"""The ledger's tables, declared once for both engines (SQLite and PostgreSQL).

Adding a table: declare it here on METADATA, then add an Alembic revision under
store/migrations/versions/ that creates it (`op.create_table(...)`, in batch mode on SQLite
for changes to existing tables); the newest revision is what every ledger is upgraded to.

Times are ISO-8601 text (UTC offsets included), as the SQLite ledger has always stored them;
`next_try`, `lease_until` and `hold_until` are epoch seconds."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)

METADATA = MetaData()
# Row ids: SQLite's INTEGER PRIMARY KEY (the rowid itself), PostgreSQL's 64-bit integer.
Id = BigInteger().with_variant(Integer(), "sqlite")

runs = Table(
    "runs", METADATA,
    Column("id", Id, primary_key=True),
    Column("started_at", Text, nullable=False),
    Column("finished_at", Text),
    Column("run_date", Text, nullable=False),
    Column("origin", Text, nullable=False),
    Column("fetched", Integer, nullable=False, server_default=text("0")),
    Column("sent", Integer, nullable=False, server_default=text("0")),
    Column("failed", Integer, nullable=False, server_default=text("0")),
    Column("outcome", Text, nullable=False, server_default=text("'running'")),
    Column("pid", Integer),
    Column("host", Text),
    Column("cause", Text),
    Column("hold_until", Double, nullable=False, server_default=text("0")),
    Column("trouble", Integer, nullable=False, server_default=text("0")),
    Column("blocked", Integer, nullable=False, server_default=text("0")),
)

papers = Table(
    "papers", METADATA,
    Column("id", Text, primary_key=True),
    Column("title", Text, nullable=False),
    Column("upvotes", Integer, nullable=False),
    Column("listed_on", Text),
    Column("first_seen", Text, nullable=False),
    Column("last_seen", Text, nullable=False),
)
Index("papers_last_seen", papers.c.last_seen)

deliveries = Table(
    "deliveries", METADATA,
    Column("id", Id, primary_key=True),
    Column("run_id", Id, ForeignKey("runs.id")),
    Column("subscriber", Text, nullable=False),
    Column("message_id", Text, nullable=False, unique=True),
    Column("subject", Text, nullable=False),
    Column("sent_at", Text, nullable=False),
    Column("papers", Integer, nullable=False),
    # The ids of the papers in the email, joined by spaces (revision 0002): what `history`
    # shows, kept for [state] keep_history (and at least the feed window).
    Column("included", Text),
    # The papers offered beside those in the email (over the subscriber's cap), joined by
    # spaces: with `included`, what is never offered to them again. There is no table of
    # offers any more (revision 0006): one row and one index entry per paper and message was
    # most of what a sender's commit and the prune cost.
    Column("over_cap", Text),
)
# No index by subscriber (revision 0007): what was offered to whom is read as a range of ids
# (store/ranges.py), so a delivery's commit and the prune do not grow with the history kept.

# A message is its digest template (stored once for everyone who shares it) and the few values
# that make it one subscriber's.
outbox_sets = Table(
    "outbox_sets", METADATA,
    Column("id", Id, primary_key=True),
    Column("created_at", Text, nullable=False),
    Column("template", LargeBinary, nullable=False),
)

outbox = Table(
    "outbox", METADATA,
    Column("id", Id, primary_key=True),
    Column("run_id", Id, ForeignKey("runs.id")),
    Column("set_id", Id),
    Column("subscriber", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("unsubscribe_url", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("message_id", Text, nullable=False, unique=True),
    Column("subject", Text, nullable=False),
    Column("envelope_from", Text, nullable=False),
    Column("included", Text, nullable=False),
    Column("offered", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    # The work queue: the run that owns the row, when it may be tried again (NULL: parked for
    # the next run), this run's attempts, and who holds it until when.
    Column("owner_run", Id),
    Column("next_try", Double),
    Column("tries", Integer, nullable=False, server_default=text("0")),
    Column("claimed_by", Text),
    Column("lease_until", Double),
)
OPEN_ROWS = text("state IN ('pending', 'sending', 'deferred')")
Index("outbox_open", outbox.c.state, outbox.c.subscriber, sqlite_where=OPEN_ROWS,
      postgresql_where=OPEN_ROWS)
Index("outbox_subscriber", outbox.c.subscriber, outbox.c.id)
Index("outbox_claim", outbox.c.owner_run, outbox.c.state, outbox.c.id)
# A claim's first pending row of any run (a `send` worker's), and the rows of its digest, in
# id order (revision 0004). Pending rows only: a sent message's commit leaves it alone.
PENDING = text("state = 'pending'")
Index("outbox_pending", outbox.c.id, sqlite_where=PENDING, postgresql_where=PENDING)
Index("outbox_set", outbox.c.set_id, outbox.c.id)

suppressions = Table(
    "suppressions", METADATA,
    Column("subscriber", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("since", Text, nullable=False),
    Column("detail", Text, nullable=False, server_default=text("''")),
    sqlite_with_rowid=False,
)

# -- self-service subscribers (store/selfservice.py; revision 0003) ---------------------

# One row per address the store knows as a subscriber. kind 'store': a subscriber who lives
# here (signed up and confirmed, imported, or added with --store). kind 'override': a
# subscriber of the config who changed their own preferences; its filter columns replace the
# config's (see audience.py for the rule).
ss_subscribers = sa.Table(
    "ss_subscribers", METADATA,
    sa.Column("email_key", sa.String(320), primary_key=True),  # the address, lower-cased
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),  # 'store' | 'override'
    sa.Column("origin", sa.String(10), nullable=False),  # 'signup' | 'import' | 'cli' | 'web'
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("topics", sa.Text, nullable=False, server_default=""),  # one per line
    sa.Column("exclude", sa.Text, nullable=False, server_default=""),
    sa.Column("authors", sa.Text, nullable=False, server_default=""),
    sa.Column("min_upvotes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_papers", sa.Integer, nullable=True),  # NULL: newsletter.max_papers
    sa.Column("frequency", sa.String(10), nullable=False, server_default="daily"),
    sa.Column("weekday", sa.Integer, nullable=False, server_default="0"),  # 0 = Monday
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# A sign-up waiting for its confirmation click. `nonce` is in the link, so a newer sign-up for
# the same address voids the older link; `confirmed_at` stays for the status counts.
ss_signups = sa.Table(
    "ss_signups", METADATA,
    sa.Column("email_key", sa.String(320), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("prefs", sa.Text, nullable=False),  # JSON: topics, exclude, authors, frequency...
    sa.Column("nonce", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("mailed_at", sa.DateTime(timezone=True), nullable=True),  # last confirmation email
    sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
)
sa.Index("ss_signups_created", ss_signups.c.created_at)

# Fixed-window counters. `subject` is a keyed hash of the IP or address, never the value.
ss_rate_limits = sa.Table(
    "ss_rate_limits", METADATA,
    sa.Column("bucket", sa.String(40), primary_key=True),
    sa.Column("subject", sa.String(64), primary_key=True),
    sa.Column("window_start", sa.BigInteger, nullable=False),  # epoch seconds
    sa.Column("hits", sa.Integer, nullable=False),
)

# 'revision' grows with every change to ss_subscribers: the web service rebuilds its token
# map, and a sender its view, only when it moved.
ss_meta = sa.Table(
    "ss_meta", METADATA,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
