"""The outbox, which is the run's work queue: the composer adds pending rows in batches, senders
claim a few at a time and record each message's fate (sent, deferred, failed, cancelled) in one
small commit. A message's Message-ID is fixed when it is added and its digest template is
stored once per set, so a message left in "sending" by a crash is rebuilt and sent again under
the same Message-ID, which receivers can drop.

The claim is the one place that must change for a server database: there it is
`SELECT ... FOR UPDATE SKIP LOCKED` with `lease_until` set, and a row whose lease ran out is
claimable again; on SQLite one run at a time claims with BEGIN IMMEDIATE."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from digest_mailer.models import MessageState, OutgoingMessage

if TYPE_CHECKING:
    from digest_mailer.store.ledger import Ledger

logger = logging.getLogger(__name__)


State = MessageState  # the outbox's own name for it
OPEN = (State.PENDING, State.SENDING, State.DEFERRED)
_COLUMNS = ("id, set_id, recipient, name, unsubscribe_url, token, message_id, subject, "
            "envelope_from, included, offered, state, attempts, tries")


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    set_id: int | None
    recipient: str
    name: str
    unsubscribe_url: str
    token: str
    message_id: str
    subject: str
    envelope_from: str
    included: tuple[str, ...]
    offered: tuple[str, ...]
    state: State
    attempts: int
    tries: int = 0  # attempts in the current run


@dataclass(frozen=True, slots=True)
class Queued:
    """One message as the composer hands it to the outbox: what rebuilds it from its set."""

    set_id: int
    recipient: str
    name: str
    unsubscribe_url: str
    token: str
    message_id: str
    subject: str
    envelope_from: str
    included: tuple[str, ...]
    offered: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Fate:
    """Where a run's message ended up, for the report."""

    recipient: str
    state: State
    error: str
    papers: int
    attempts: int


def _entry(row: tuple[object, ...]) -> Entry:
    (i, set_id, rcpt, name, url, token, mid, subj, ef, inc, off, st, a, t) = row
    return Entry(int(i), set_id, str(rcpt), str(name), str(url), str(token),  # type: ignore
                 str(mid), str(subj), str(ef), tuple(str(inc).split()),
                 tuple(str(off).split()), State(st), int(a), int(t))  # type: ignore


class Outbox:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def add_set(self, template: bytes, now: datetime) -> int:
        with self._ledger.transaction() as db:
            cur = db.execute("INSERT INTO outbox_sets (created_at, template) VALUES (?, ?)",
                             (now.isoformat(), zlib.compress(template, 6)))
            return int(cur.lastrowid or 0)

    def load_set(self, set_id: int) -> bytes | None:
        row = self._ledger.conn.execute("SELECT template FROM outbox_sets WHERE id = ?",
                                        (set_id,)).fetchone()
        return zlib.decompress(row[0]) if row else None

    def add(self, message: OutgoingMessage, *, run_id: int | None, included: Sequence[str],
            offered: Sequence[str], now: datetime) -> int:
        stamp = now.isoformat()
        with self._ledger.transaction() as db:
            cur = db.execute(
                "INSERT INTO outbox (run_id, owner_run, next_try, set_id, subscriber, recipient, "
                "name, unsubscribe_url, token, message_id, subject, envelope_from, included, "
                "offered, state, created_at, updated_at) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?, ?)",
                (run_id, run_id, message.set_id, message.recipient.lower(), message.recipient,
                 message.name, message.unsubscribe_url, message.token, message.message_id,
                 message.subject, message.envelope_from, " ".join(included), " ".join(offered),
                 State.PENDING, stamp, stamp))
            return int(cur.lastrowid or 0)

    def add_many(self, rows: Sequence[Queued], *, run_id: int, now: datetime) -> None:
        """One transaction for a batch: nothing in it was sent, so a crash loses nothing the
        next run does not compose again."""
        stamp = now.isoformat()
        with self._ledger.transaction() as db:
            db.executemany(
                "INSERT INTO outbox (run_id, owner_run, next_try, set_id, subscriber, recipient, "
                "name, unsubscribe_url, token, message_id, subject, envelope_from, included, "
                "offered, state, created_at, updated_at) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?, ?, ?)",
                [(run_id, run_id, q.set_id, q.recipient.lower(), q.recipient, q.name,
                  q.unsubscribe_url, q.token, q.message_id, q.subject, q.envelope_from,
                  " ".join(q.included), " ".join(q.offered), State.PENDING, stamp, stamp)
                 for q in rows])

    def adopt(self, run_id: int) -> list[Entry]:
        """What earlier runs left open becomes this run's to send, first. The caller holds the
        run lock and no sender of an earlier run is alive, so "sending" means it died."""
        with self._ledger.transaction() as db:
            db.execute(
                "UPDATE outbox SET owner_run = ?, next_try = 0, tries = 0, claimed_by = NULL, "
                "state = CASE WHEN state = ? THEN ? ELSE state END WHERE state IN (?, ?, ?)",
                (run_id, State.SENDING, State.PENDING, *OPEN))
            rows = db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE owner_run = ? AND state "
                              "IN (?, ?, ?) ORDER BY id", (run_id, *OPEN))
        return [_entry(r) for r in rows]

    def claim(self, run_id: int, sender: str, limit: int, now: float, lease: float
              ) -> list[Entry]:
        """Up to `limit` of this run's rows that are due, now in this sender's hands: the first
        due and those after it of the same digest, so a sender builds each digest's template
        once and senders seldom build the same one."""
        due = "owner_run = ? AND state IN (?, ?) AND next_try <= ?"
        args = (run_id, State.PENDING, State.DEFERRED, now)
        with self._ledger.transaction() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE {due} AND set_id IS (SELECT set_id FROM "
                f"outbox WHERE {due} ORDER BY id LIMIT 1) ORDER BY id LIMIT ?",
                (*args, *args, limit)).fetchall()
            if rows:
                ids = [r[0] for r in rows]
                db.execute(f"UPDATE outbox SET state = ?, claimed_by = ?, lease_until = ? "
                           f"WHERE id IN ({','.join('?' * len(ids))})",
                           (State.SENDING, sender, now + lease, *ids))
        return [_entry(r) for r in rows]

    def due(self, run_id: int) -> tuple[int, float | None]:
        """This run's rows in hand or due later, and the earliest time one is due."""
        row = self._ledger.conn.execute(
            "SELECT count(*), min(next_try) FROM outbox WHERE owner_run = ? AND state IN "
            "(?, ?, ?) AND (state = ? OR next_try IS NOT NULL)",
            (run_id, *OPEN, State.SENDING)).fetchone()
        return int(row[0]), row[1]

    def _close(self, entry_id: int, state: State, now: datetime, error: str | None, *,
               attempt: bool, next_try: float | None = None) -> None:
        with self._ledger.transaction() as db:
            db.execute("UPDATE outbox SET state = ?, updated_at = ?, last_error = "
                       "coalesce(?, last_error), attempts = attempts + ?, tries = tries + ?, "
                       "next_try = ?, claimed_by = NULL WHERE id = ?",
                       (state, now.isoformat(), error, int(attempt), int(attempt), next_try,
                        entry_id))

    def deferred(self, entry_id: int, now: datetime, error: str,
                 next_try: float | None = None) -> None:
        """Refused for now: tried again at `next_try` in this run, or (None) by the next."""
        self._close(entry_id, State.DEFERRED, now, error, attempt=True, next_try=next_try)

    def failed(self, entry_id: int, now: datetime, error: str, *, attempt: bool = True
               ) -> None:
        self._close(entry_id, State.FAILED, now, error, attempt=attempt)

    def cancelled(self, entry_id: int, now: datetime, reason: str) -> None:
        self._close(entry_id, State.CANCELLED, now, reason, attempt=False)

    def release(self, entry_ids: Sequence[int], *, park: bool = False) -> None:
        """Back to the queue untried: due at once, or (`park`) left for the next run."""
        if entry_ids:
            with self._ledger.transaction() as db:
                db.execute(
                    "UPDATE outbox SET state = CASE WHEN attempts > 0 THEN ? ELSE ? END, "
                    f"claimed_by = NULL, next_try = ? WHERE state = ? AND id IN "
                    f"({','.join('?' * len(entry_ids))})",
                    (State.DEFERRED, State.PENDING, None if park else 0, State.SENDING,
                     *entry_ids))

    def return_claimed(self, sender: str, why: str) -> int:
        """A dead sender's rows: back in the queue for the next run, same Message-ID."""
        with self._ledger.transaction() as db:
            return db.execute("UPDATE outbox SET state = ?, claimed_by = NULL, next_try = NULL, "
                              "last_error = ? WHERE state = ? AND claimed_by = ?",
                              (State.PENDING, why, State.SENDING, sender)).rowcount

    def park(self, run_id: int) -> int:
        """The end of a run: whatever it did not send waits for the next one; nothing stays
        "sending" (its senders are gone)."""
        with self._ledger.transaction() as db:
            return db.execute(
                "UPDATE outbox SET next_try = NULL, claimed_by = NULL, state = CASE WHEN "
                "state = ? THEN ? ELSE state END WHERE owner_run = ? AND state IN (?, ?, ?)",
                (State.SENDING, State.PENDING, run_id, *OPEN)).rowcount

    def fates(self, run_id: int) -> dict[str, Fate]:
        rows = self._ledger.conn.execute(
            "SELECT message_id, recipient, state, coalesce(last_error, ''), included, attempts "
            "FROM outbox WHERE owner_run = ?", (run_id,))
        return {mid: Fate(rcpt, State(st), err, len(inc.split()), a)
                for mid, rcpt, st, err, inc, a in rows}

    def sent(self, entry_id: int, now: datetime, run_id: int | None,
             subject: str | None = None, entry: Entry | None = None) -> None:
        """The server accepted it: the delivery, the papers it offered and the outbox state
        land in one transaction. `subject`: as it went out (the row may not know it yet);
        `entry`: the row as the sender claimed it, which spares reading it again."""
        stamp = now.isoformat()
        with self._ledger.transaction() as db:
            if entry is None:
                row = db.execute("SELECT subscriber, message_id, subject, included, offered "
                                 "FROM outbox WHERE id = ?", (entry_id,)).fetchone()
            else:
                row = (entry.recipient.lower(), entry.message_id, entry.subject,
                       " ".join(entry.included), " ".join(entry.offered))
            subscriber, message_id, stored, included, offered = row
            subject = subject or stored
            chosen = set(included.split())
            cur = db.execute(
                "INSERT INTO deliveries (run_id, subscriber, message_id, subject, sent_at, "
                "papers) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, subscriber, message_id, subject, stamp, len(chosen)))
            db.executemany(
                "INSERT OR IGNORE INTO offers (subscriber, paper_id, delivery_id, included) "
                "VALUES (?, ?, ?, ?)",
                [(subscriber, pid, cur.lastrowid, int(pid in chosen)) for pid in offered.split()])
            db.execute("UPDATE outbox SET state = ?, updated_at = ?, attempts = attempts + 1, "
                       "tries = tries + 1, claimed_by = NULL, next_try = NULL, subject = ? "
                       "WHERE id = ?", (State.SENT, stamp, subject, entry_id))

    def open_entries(self) -> list[Entry]:
        """What is unsent: pending, in a sender's hands, or deferred."""
        rows = self._ledger.conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state IN (?, ?, ?) ORDER BY id", OPEN)
        return [_entry(r) for r in rows]

    def waiting_subscribers(self) -> frozenset[str]:
        rows = self._ledger.conn.execute(
            "SELECT DISTINCT subscriber FROM outbox WHERE state IN (?, ?, ?)", OPEN)
        return frozenset(r[0] for r in rows)

    def prune_sets(self) -> None:
        """Templates no unsent message needs any more."""
        with self._ledger.transaction() as db:
            db.execute("DELETE FROM outbox_sets WHERE id NOT IN (SELECT set_id FROM outbox "
                       "WHERE set_id IS NOT NULL AND state IN (?, ?, ?))", OPEN)

    def hard_failures(self, subscriber: str) -> int:
        """Failures of this address since its last delivery."""
        row = self._ledger.conn.execute(
            "SELECT count(*) FROM outbox WHERE subscriber = ? AND state = ? AND id > "
            "coalesce((SELECT max(id) FROM outbox WHERE subscriber = ? AND state = ?), 0)",
            (subscriber.lower(), State.FAILED, subscriber.lower(), State.SENT)).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        rows = self._ledger.conn.execute("SELECT state, count(*) FROM outbox GROUP BY state")
        return {state: n for state, n in rows}

    def problems(self, limit: int = 5) -> list[tuple[str, str, str, str]]:
        """The latest messages that failed or were cancelled: (when, to, state, why)."""
        rows = self._ledger.conn.execute(
            "SELECT updated_at, recipient, state, coalesce(last_error, '') FROM outbox "
            "WHERE state IN (?, ?) ORDER BY id DESC LIMIT ?",
            (State.FAILED, State.CANCELLED, limit))
        return [tuple(r) for r in rows]
