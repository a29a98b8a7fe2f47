"""The ledger (SQLite): papers seen, what was offered and sent to whom, and runs.

Each delivery is committed the moment the backend accepted it, in one transaction with the
papers it offered, so a crash never loses a delivery that happened nor records one that did not.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import NamedTuple

from digest_mailer.errors import StoreError
from digest_mailer.models import MessageState, Paper, RunState
from digest_mailer.store.db import Db, damaged_hint, store_error
from digest_mailer.store.outbox import Outbox
from digest_mailer.store.schema import COLUMNS, SCHEMA, SCHEMA_VERSION

logger = logging.getLogger(__name__)
_MAX_INT = 2**63 - 1  # SQLite's INTEGER


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether a run's process may still be running (one on another host: assumed so)."""
    if pid is None or host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunRecord(NamedTuple):
    id: int
    started_at: str
    finished_at: str | None
    run_date: str
    fetched: int
    sent: int
    failed: int
    outcome: str
    cause: str | None = None


class RunControl(NamedTuple):
    """What senders read before each message: hold off until, troubles in a row, blocked."""

    hold_until: float
    trouble: int
    blocked: bool
    cause: str | None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    sent_at: str  # when it was sent, or when its fate was last recorded
    subscriber: str
    message_id: str
    subject: str
    papers: tuple[str, ...]
    titles: tuple[str, ...] = ()  # the papers' titles, as the ledger knows them
    state: MessageState = MessageState.SENT
    reason: str = ""  # why it was not sent, for the other states


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
        self._conn = Db(conn, path)
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
            # A checkpoint (copying the log into the file, two fsyncs) every 1,000 pages, the
            # default, came every 150 messages and cost 70% of a send's commits; the run
            # checkpoints once at its end instead (checkpoint()). Safety is the same: a commit
            # is in the log, whose size this bounds (32 MB).
            conn.execute("PRAGMA wal_autocheckpoint=8000")
            conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as e:
            raise store_error(str(path), e, "open") from e
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
            raise store_error(str(path), e, "read") from e
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
        except StoreError as e:
            raise StoreError(f"{self.path}: not a digest-mailer ledger, or a damaged one "
                             f"({e.__cause__})", hint=damaged_hint(self.path)) from e
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: ledger schema {version} is newer than this "
                             f"digest-mailer understands ({SCHEMA_VERSION})",
                             hint="upgrade digest-mailer")
        return version

    def _migrate(self) -> None:
        if self._check_version() == SCHEMA_VERSION:
            return
        # Columns first (the script's indexes may name them); executescript commits any open
        # transaction first, so the script carries its own.
        alter = []
        for table, column, definition in COLUMNS:
            have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if have and column not in have:
                alter.append(f"ALTER TABLE {table} ADD COLUMN {column} {definition};")
        self._conn.executescript("BEGIN IMMEDIATE;\n" + "\n".join(alter) +
                                 f"\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
        logger.info("%s: ledger schema %d ready", self.path, SCHEMA_VERSION)

    @contextmanager
    def transaction(self) -> Iterator[Db]:
        if self.readonly:
            raise StoreError(f"{self.path}: the ledger is open read-only (a dry run)")
        raw = self._conn.raw
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise store_error(self.path, e, "write") from e
        try:
            yield self._conn
            raw.execute("COMMIT")
        except BaseException as e:
            if raw.in_transaction:
                with suppress(sqlite3.Error):
                    raw.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise store_error(self.path, e, "write") from e
            raise

    # -- reads ---------------------------------------------------------------------------

    @property
    def conn(self) -> Db:
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
        """Runs, oldest first; `limit` keeps the latest ones. A run still marked running whose
        process is gone shows as interrupted."""
        rows = self._conn.execute(
            "SELECT id, started_at, finished_at, run_date, fetched, sent, failed, outcome, "
            "cause, pid, host FROM runs ORDER BY id DESC LIMIT ?",
            (-1 if limit is None else limit,))
        out = []
        for *fields, pid, host in reversed(rows.fetchall()):
            record = RunRecord(*fields)
            if record.outcome == RunState.RUNNING and not _alive(pid, host):
                record = record._replace(outcome=RunState.INTERRUPTED,
                                         cause=record.cause or "its process died")
            out.append(record)
        return out

    def offer_log(self, subscriber: str) -> dict[str, tuple[str, bool]]:
        """paper id -> (when its email was sent, whether it was in the email or over the cap)."""
        rows = self._conn.execute(
            "SELECT o.paper_id, d.sent_at, o.included FROM offers o JOIN deliveries d "
            "ON d.id = o.delivery_id WHERE o.subscriber = ?", (subscriber.lower(),))
        return {pid: (sent_at, bool(included)) for pid, sent_at, included in rows}

    def history(self, *, subscriber: str | None = None, paper: str | None = None,
                since: date | None = None) -> list[HistoryRow]:
        """Every message sent, and every one that was not (failed, cancelled, or still
        waiting) with its reason, in the order they were made."""
        where, args = [], []
        if subscriber:
            where.append("subscriber = ?")
            args.append(subscriber.lower())
        if paper:
            where.append("(' ' || included || ' ') LIKE ?")
            args.append(f"% {paper} %")
        if since:
            where.append("stamp >= ?")
            args.append(since.isoformat())
        # Deliveries made before the outbox existed have no outbox row: both are read.
        sql = ("SELECT * FROM (SELECT d.id AS n, 0 AS k, d.sent_at AS stamp, d.subscriber, "
               "d.message_id, d.subject, (SELECT group_concat(paper_id, ' ') FROM offers o "
               "WHERE o.delivery_id = d.id AND o.included = 1) AS included, 'sent' AS state, "
               "'' AS reason FROM deliveries d UNION ALL SELECT x.id, 1, x.updated_at, "
               "x.subscriber, x.message_id, x.subject, x.included, x.state, "
               "coalesce(x.last_error, '') FROM outbox x WHERE x.state != 'sent')"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY stamp, k, n")
        rows = self._conn.execute(sql, args).fetchall()
        ids = {pid for row in rows for pid in (row[6] or "").split()}
        titles = self.titles(ids)
        out = []
        for _, _, stamp, sub, mid, subject, included, state, reason in rows:
            papers = tuple(sorted((included or "").split()))
            out.append(HistoryRow(stamp, sub, mid, subject, papers,
                                  tuple(titles.get(p, "") for p in papers),
                                  MessageState(state), reason))
        return out

    def titles(self, ids: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(ids))
        found: dict[str, str] = {}
        for at in range(0, len(wanted), 500):
            chunk = wanted[at:at + 500]
            found.update(self._conn.execute(
                f"SELECT id, title FROM papers WHERE id IN ({','.join('?' * len(chunk))})",
                chunk).fetchall())
        return found

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
        """A new run. The caller holds the run lock, so a run still marked running died."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET outcome = ?, cause = coalesce(cause, ?) "
                       "WHERE outcome = ?", (RunState.INTERRUPTED, "its process died",
                                             RunState.RUNNING))
            cur = db.execute("INSERT INTO runs (started_at, run_date, origin, pid, host) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (started_at.isoformat(), run_date.isoformat(), origin,
                              os.getpid(), socket.gethostname()))
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, finished_at: datetime, *, fetched: int, sent: int,
                   failed: int, outcome: RunState, cause: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET finished_at = ?, fetched = ?, sent = ?, failed = ?, "
                       "outcome = ?, cause = coalesce(?, cause) WHERE id = ?",
                       (finished_at.isoformat(), fetched, sent, failed, outcome, cause,
                        run_id))

    def checkpoint(self) -> None:
        """The log folded into the file and emptied, once the run's senders are done."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def run_control(self, run_id: int) -> RunControl:
        row = self._conn.execute("SELECT hold_until, trouble, blocked, cause FROM runs "
                                 "WHERE id = ?", (run_id,)).fetchone()
        return RunControl(float(row[0]), int(row[1]), bool(row[2]), row[3])

    def server_trouble(self, run_id: int, cause: str, now: float, delays: Sequence[float],
                       *, fatal: bool = False) -> RunControl:
        """One more sign that the server cannot be used: the run holds off for the next delay,
        or, past the last one (or at once when `fatal`), is blocked with that cause. Senders
        that hit the same trouble together count once."""
        with self.transaction() as db:
            hold, trouble, blocked = db.execute(
                "SELECT hold_until, trouble, blocked FROM runs WHERE id = ?",
                (run_id,)).fetchone()
            if not blocked and (fatal or hold <= now):
                trouble += 1
                blocked = fatal or trouble > len(delays)
                hold = now if blocked else now + delays[trouble - 1]
                db.execute("UPDATE runs SET hold_until = ?, trouble = ?, blocked = ?, cause = ? "
                           "WHERE id = ?", (hold, trouble, int(blocked), cause, run_id))
        return RunControl(hold, trouble, bool(blocked), cause)

    def server_fine(self, run_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET trouble = 0, cause = NULL WHERE id = ? AND blocked = 0",
                       (run_id,))

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
                [(p.id, p.title, min(max(p.upvotes, 0), _MAX_INT),
                  p.listed_on.isoformat() if p.listed_on else None, stamp, stamp)
                 for p in papers])
