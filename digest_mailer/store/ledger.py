"""The ledger (SQLite): papers seen, what was offered and sent to whom, and runs.

Each delivery is committed the moment the backend accepted it, in one transaction with the
papers it offered, so a crash never loses a delivery that happened nor records one that did not.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import NamedTuple

from digest_mailer.errors import StoreError
from digest_mailer.models import Paper
from digest_mailer.store.outbox import Outbox
from digest_mailer.store.schema import SCHEMA, SCHEMA_VERSION

logger = logging.getLogger(__name__)

class RunRecord(NamedTuple):
    id: int
    started_at: str
    finished_at: str | None
    run_date: str
    fetched: int
    sent: int
    failed: int
    outcome: str


@dataclass(frozen=True, slots=True)
class HistoryRow:
    sent_at: str
    subscriber: str
    message_id: str
    subject: str
    papers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    subscriber: str
    message_id: str
    subject: str
    sent_at: str
    papers: int
    run_id: int | None


class Ledger:
    """One SQLite connection. Open with `Ledger.open` (read-write) or `Ledger.open_readonly`."""

    def __init__(self, conn: sqlite3.Connection, path: str, *, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly

    @classmethod
    def open(cls, path: Path) -> Ledger:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL with NORMAL: every commit survives the process dying (SIGKILL included); only
            # an OS crash or power loss can take back the last commits. FULL would fsync three
            # times per message.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{path}: cannot open the ledger ({e})",
                             hint="check [state] path and its folder's permissions") from e
        ledger = cls(conn, str(path), readonly=False)
        ledger._migrate()
        return ledger

    @classmethod
    def open_readonly(cls, path: Path) -> Ledger:
        """For dry runs: reads what exists and never writes; a missing file is an empty ledger."""
        try:
            if path.exists():
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                       isolation_level=None)
                ledger = cls(conn, str(path), readonly=True)
                if ledger._check_version() > 0:
                    return ledger
                # Version 0: an empty file (touched, or a first run killed at once) holds
                # nothing yet; read it as the empty ledger it is.
                ledger.close()
            conn = sqlite3.connect(":memory:", isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot read the ledger ({e})") from e
        conn.executescript(SCHEMA)
        return cls(conn, str(path), readonly=True)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self) -> int:
        try:
            version = self._version()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a digest-mailer ledger ({e})",
                             hint="point [state] path at a new file") from e
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: ledger schema {version} is newer than this "
                             f"digest-mailer understands ({SCHEMA_VERSION})",
                             hint="upgrade digest-mailer")
        return version

    def _migrate(self) -> None:
        if self._check_version() == SCHEMA_VERSION:
            return
        # executescript commits any open transaction first, so the script carries its own.
        try:
            self._conn.executescript(
                f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot create the ledger tables ({e})") from e
        logger.info("%s: ledger schema %d ready", self.path, SCHEMA_VERSION)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError(f"{self.path}: the ledger is open read-only (a dry run)")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot write the ledger ({e})",
                             hint="is the disk full, or the file read-only?") from e

    # -- reads ---------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    @property
    def outbox(self) -> Outbox:
        return Outbox(self)

    def offered_ids(self, subscriber: str, *, check_outbox: bool = True) -> frozenset[str]:
        """Papers offered in a delivery, and those held by a message not sent yet: neither
        goes into another email. `check_outbox=False` skips the second part for a subscriber
        known to have no unsent message."""
        key = subscriber.lower()
        ids = {r[0] for r in self._conn.execute(
            "SELECT paper_id FROM offers WHERE subscriber = ?", (key,))}
        if check_outbox:
            for (offered,) in self._conn.execute(
                    "SELECT offered FROM outbox WHERE subscriber = ? AND state IN "
                    "('pending', 'sending', 'deferred')", (key,)):
                ids.update(offered.split())
        return frozenset(ids)

    # -- suppressions ---------------------------------------------------------------------

    def suppressed(self, subscriber: str) -> str | None:
        """Why this address gets nothing (an unsubscribe, bounces), or None."""
        row = self._conn.execute("SELECT reason FROM suppressions WHERE subscriber = ?",
                                 (subscriber.lower(),)).fetchone()
        return row[0] if row else None

    def suppressions(self) -> dict[str, tuple[str, str, str]]:
        rows = self._conn.execute("SELECT subscriber, reason, since, detail FROM suppressions "
                                  "ORDER BY since")
        return {s: (reason, since, detail) for s, reason, since, detail in rows}

    def suppress(self, subscriber: str, reason: str, now: datetime, detail: str = "") -> bool:
        """Idempotent; True when the address was not suppressed before."""
        with self.transaction() as db:
            cur = db.execute("INSERT OR IGNORE INTO suppressions (subscriber, reason, since, "
                             "detail) VALUES (?, ?, ?, ?)",
                             (subscriber.lower(), reason, now.isoformat(), detail))
            return cur.rowcount == 1

    def unsuppress(self, subscriber: str) -> bool:
        with self.transaction() as db:
            cur = db.execute("DELETE FROM suppressions WHERE subscriber = ?",
                             (subscriber.lower(),))
            return cur.rowcount == 1

    def deliveries(self, subscriber: str | None = None) -> list[DeliveryRecord]:
        sql = "SELECT subscriber, message_id, subject, sent_at, papers, run_id FROM deliveries"
        args: tuple[str, ...] = ()
        if subscriber:
            sql, args = sql + " WHERE subscriber = ?", (subscriber.lower(),)
        return [DeliveryRecord(*row) for row in self._conn.execute(sql + " ORDER BY id", args)]

    def sent_papers(self, message_id: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT o.paper_id FROM offers o JOIN deliveries d ON d.id = o.delivery_id "
            "WHERE d.message_id = ? AND o.included = 1 ORDER BY o.paper_id", (message_id,))
        return [r[0] for r in rows]

    def last_run_started(self) -> str | None:
        row = self._conn.execute("SELECT max(started_at) FROM runs").fetchone()
        return row[0] if row else None

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        """Runs, oldest first; `limit` keeps the latest ones."""
        rows = self._conn.execute(
            "SELECT id, started_at, finished_at, run_date, fetched, sent, failed, outcome "
            "FROM runs ORDER BY id DESC LIMIT ?", (-1 if limit is None else limit,))
        return [RunRecord(*r) for r in reversed(rows.fetchall())]

    def offer_log(self, subscriber: str) -> dict[str, tuple[str, bool]]:
        """paper id -> (when its email was sent, whether it was in the email or over the cap)."""
        rows = self._conn.execute(
            "SELECT o.paper_id, d.sent_at, o.included FROM offers o JOIN deliveries d "
            "ON d.id = o.delivery_id WHERE o.subscriber = ?", (subscriber.lower(),))
        return {pid: (sent_at, bool(included)) for pid, sent_at, included in rows}

    def history(self, *, subscriber: str | None = None, paper: str | None = None,
                since: date | None = None) -> list[HistoryRow]:
        where, args = [], []
        if subscriber:
            where.append("d.subscriber = ?")
            args.append(subscriber.lower())
        if paper:
            where.append("EXISTS (SELECT 1 FROM offers o WHERE o.delivery_id = d.id AND "
                         "o.paper_id = ? AND o.included = 1)")
            args.append(paper)
        if since:
            where.append("d.sent_at >= ?")
            args.append(since.isoformat())
        sql = ("SELECT d.id, d.sent_at, d.subscriber, d.message_id, d.subject, "
               "(SELECT group_concat(paper_id, ' ') FROM offers o WHERE o.delivery_id = d.id "
               "AND o.included = 1) FROM deliveries d"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY d.id")
        return [HistoryRow(sent_at, sub, mid, subject, tuple(sorted((ids or "").split())))
                for _, sent_at, sub, mid, subject, ids in self._conn.execute(sql, args)]

    def counts(self) -> dict[str, int]:
        one = self._conn.execute
        return {
            "deliveries": one("SELECT count(*) FROM deliveries").fetchone()[0],
            "papers": one("SELECT count(*) FROM papers").fetchone()[0],
            "subscribers_reached": one(
                "SELECT count(DISTINCT subscriber) FROM deliveries").fetchone()[0],
            "runs": one("SELECT count(*) FROM runs").fetchone()[0],
        }

    # -- writes --------------------------------------------------------------------------

    def start_run(self, started_at: datetime, run_date: date, origin: str) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO runs (started_at, run_date, origin) VALUES (?, ?, ?)",
                             (started_at.isoformat(), run_date.isoformat(), origin))
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, finished_at: datetime, *, fetched: int, sent: int,
                   failed: int, outcome: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET finished_at = ?, fetched = ?, sent = ?, failed = ?, "
                       "outcome = ? WHERE id = ?",
                       (finished_at.isoformat(), fetched, sent, failed, outcome, run_id))

    def recent_titles(self, days: int) -> dict[str, list[Paper]]:
        """The papers of the last `days` feeds the ledger knows, by day, titles only."""
        rows = self.conn.execute(
            "SELECT id, title, upvotes, coalesce(listed_on, substr(first_seen, 1, 10)) AS day "
            "FROM papers WHERE day IN (SELECT DISTINCT coalesce(listed_on, substr(first_seen, "
            "1, 10)) AS d FROM papers ORDER BY d DESC LIMIT ?)", (days,)).fetchall()
        out: dict[str, list[Paper]] = {}
        for pid, title, upvotes, day in rows:
            out.setdefault(day, []).append(Paper(id=pid, title=title, upvotes=upvotes))
        return out

    def remember(self, papers: Iterable[Paper], seen_at: datetime) -> None:
        stamp = seen_at.isoformat()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO papers (id, title, upvotes, listed_on, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET title = excluded.title, "
                "upvotes = max(papers.upvotes, excluded.upvotes), last_seen = excluded.last_seen",
                [(p.id, p.title, p.upvotes, p.listed_on.isoformat() if p.listed_on else None,
                  stamp, stamp) for p in papers])
