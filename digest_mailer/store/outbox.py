"""The outbox: each message moves pending -> sending -> sent, or deferred / failed, committed
at every step. Its Message-ID is fixed when it is created and its digest template is stored
once per set, so a message left in "sending" by a crash is rebuilt and sent again under the
same Message-ID, which receivers can drop."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from digest_mailer.models import OutgoingMessage

if TYPE_CHECKING:
    from digest_mailer.store.ledger import Ledger

logger = logging.getLogger(__name__)


class State(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"


OPEN = (State.PENDING, State.SENDING, State.DEFERRED)


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
                "INSERT INTO outbox (run_id, set_id, subscriber, recipient, name, "
                "unsubscribe_url, token, message_id, subject, envelope_from, included, offered, "
                "state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?)",
                (run_id, message.set_id, message.recipient.lower(), message.recipient,
                 message.name, message.unsubscribe_url, message.token, message.message_id,
                 message.subject, message.envelope_from, " ".join(included), " ".join(offered),
                 State.PENDING, stamp, stamp))
            return int(cur.lastrowid or 0)

    def _move(self, entry_id: int, state: State, now: datetime, *, error: str | None = None,
              attempt: bool = False) -> None:
        with self._ledger.transaction() as db:
            db.execute("UPDATE outbox SET state = ?, updated_at = ?, last_error = "
                       "coalesce(?, last_error), attempts = attempts + ? WHERE id = ?",
                       (state, now.isoformat(), error, int(attempt), entry_id))

    def sending(self, entry_id: int, now: datetime) -> None:
        self._move(entry_id, State.SENDING, now, attempt=True)

    def deferred(self, entry_id: int, now: datetime, error: str) -> None:
        self._move(entry_id, State.DEFERRED, now, error=error)

    def failed(self, entry_id: int, now: datetime, error: str) -> None:
        self._move(entry_id, State.FAILED, now, error=error)

    def sent(self, entry_id: int, now: datetime, run_id: int | None) -> None:
        """The server accepted it: the delivery, the papers it offered and the outbox state
        land in one transaction."""
        stamp = now.isoformat()
        with self._ledger.transaction() as db:
            row = db.execute("SELECT subscriber, message_id, subject, included, offered "
                             "FROM outbox WHERE id = ?", (entry_id,)).fetchone()
            subscriber, message_id, subject, included, offered = row
            chosen = included.split()
            cur = db.execute(
                "INSERT INTO deliveries (run_id, subscriber, message_id, subject, sent_at, "
                "papers) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, subscriber, message_id, subject, stamp, len(chosen)))
            db.executemany(
                "INSERT OR IGNORE INTO offers (subscriber, paper_id, delivery_id, included) "
                "VALUES (?, ?, ?, ?)",
                [(subscriber, pid, cur.lastrowid, int(pid in chosen)) for pid in offered.split()])
            db.execute("UPDATE outbox SET state = ?, updated_at = ? WHERE id = ?",
                       (State.SENT, stamp, entry_id))

    def open_entries(self) -> list[Entry]:
        """What a run left unsent: pending, in flight when it stopped, or deferred."""
        rows = self._ledger.conn.execute(
            "SELECT id, set_id, recipient, name, unsubscribe_url, token, message_id, subject, "
            "envelope_from, included, offered, state, attempts FROM outbox "
            "WHERE state IN (?, ?, ?) ORDER BY id", OPEN)
        return [Entry(i, set_id, rcpt, name, url, token, mid, subj, ef, tuple(inc.split()),
                      tuple(off.split()), State(st), a)
                for i, set_id, rcpt, name, url, token, mid, subj, ef, inc, off, st, a in rows]

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
