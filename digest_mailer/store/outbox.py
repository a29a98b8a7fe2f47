"""The outbox, which is the run's work queue: the composer adds pending rows in batches, senders
claim a few at a time and record each message's fate (sent, deferred, failed, cancelled) in one
small commit. A message's Message-ID is fixed when it is added and its digest template is
stored once per set, so a message left in "sending" by a crash is rebuilt and sent again under
the same Message-ID, which receivers can drop.

The claim is where the engines differ: on SQLite one run at a time claims with BEGIN
IMMEDIATE; on PostgreSQL the same SELECT takes its rows FOR UPDATE SKIP LOCKED, so claimers
never wait for each other nor take the same row."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Executable,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    or_,
    select,
    union_all,
    update,
)

from digest_mailer.errors import StoreError
from digest_mailer.models import MessageState, OutgoingMessage
from digest_mailer.store.ranges import sent_since
from digest_mailer.store.sql import insert_for, one_of, values_of
from digest_mailer.store.tables import OPEN_ROWS, deliveries, outbox, outbox_sets

if TYPE_CHECKING:
    from digest_mailer.store.db import Db
    from digest_mailer.store.ledger import Ledger

logger = logging.getLogger(__name__)


State = MessageState  # the outbox's own name for it
OPEN = (State.PENDING, State.SENDING, State.DEFERRED)
_OPEN = [s.value for s in OPEN]
x = outbox.c
_COLUMNS = (x.id, x.set_id, x.recipient, x.name, x.unsubscribe_url, x.token, x.message_id,
            x.subject, x.envelope_from, x.included, x.offered, x.state, x.attempts, x.tries)

# The hot statements, built once (SQLAlchemy caches their SQL per dialect).
_ADD = outbox.insert()
_ADD_SET = outbox_sets.insert().values(created_at=bindparam("at"), template=bindparam("t"))
# The id by RETURNING on PostgreSQL; SQLite's driver gives it as lastrowid (RETURNING needs
# SQLite 3.35).
_ADD_SET_PG = _ADD_SET.returning(outbox_sets.c.id)
_ANY_SET = select(outbox_sets.c.id).limit(1)
_LOAD_SET = select(outbox_sets.c.template).where(outbox_sets.c.id == bindparam("i"))
# Due: waiting and its time has come, or in the hands of a claimer whose lease ran out (it
# died, or lost the ledger for a whole lease): the same row, the same Message-ID.
_EXPIRED = and_(x.state == State.SENDING.value, x.lease_until < bindparam("now"))
_WAITING = and_(x.state.in_([State.PENDING.value, State.DEFERRED.value]),
                x.next_try <= bindparam("now"))
_DUE = and_(x.owner_run == bindparam("run"), or_(_WAITING, _EXPIRED))
# A `send` worker takes any run's rows, and also what an ended run left pending (parked).
# Deferred rows a run gave up on (parked) wait for the next run, as they always did.
_ANY_DUE = or_(_WAITING, _EXPIRED, and_(x.state == State.PENDING.value, x.next_try.is_(None)))


def _probe(state: State, *where: Any) -> Any:
    """The first row of one way of being due: an index range read in id order."""
    first = (select(x.id, x.set_id).where(x.state == literal_column(f"'{state.value}'"), *where)
             .order_by(x.id).limit(1).subquery())
    return select(first.c.id, first.c.set_id)


def _claim_of(run: bool) -> tuple[Any, Any, Any]:
    """A claim in two index reads (quadratic in the queue when one statement sorted every
    due row: revision 0004): the first due row, one probe per way of being due; then from
    it, the due rows of its digest. The second takes its rows FOR UPDATE SKIP LOCKED on
    PostgreSQL.

    A run's probes read outbox_claim (its rows by state, in id order). A `send` worker's
    read the partial indexes of pending rows and of open rows (deferred and sending ones,
    few, sorted). The states are written into the SQL, not bound, and the open-rows term is
    the index's own: SQLite and PostgreSQL use a partial index only for a query whose WHERE
    implies the index's when the statement is planned."""
    now: Any = bindparam("now")
    owner = [x.owner_run == bindparam("run")] if run else [OPEN_ROWS]
    # A `send` worker also takes what an ended run left pending (next_try NULL: parked).
    waiting = [or_(x.next_try <= now, x.next_try.is_(None))] if not run else [x.next_try <= now]
    probes = union_all(
        _probe(State.PENDING, *([x.owner_run == bindparam("run")] if run else []), *waiting),
        _probe(State.DEFERRED, *owner, x.next_try <= now),
        _probe(State.SENDING, *owner, x.lease_until < now)).subquery()
    first = select(probes.c.id, probes.c.set_id).order_by(probes.c.id).limit(1)
    due = _DUE if run else _ANY_DUE
    rows = (select(*_COLUMNS).where(x.set_id.is_not_distinct_from(bindparam("set")),
                                    x.id >= bindparam("first"), due)
            .order_by(x.id).limit(bindparam("limit")))
    return first, rows, rows.with_for_update(skip_locked=True, of=outbox)


_FIRST, _CLAIM, _CLAIM_LOCKING = _claim_of(run=True)
_FIRST_ANY, _CLAIM_ANY, _CLAIM_ANY_LOCKING = _claim_of(run=False)
_RENEW = update(outbox).where(x.claimed_by == bindparam("by"),
                              x.state == State.SENDING.value).values(
    lease_until=bindparam("until"))
_TAKE = {d: update(outbox).where(where).values(
    state=State.SENDING.value, claimed_by=bindparam("by"), lease_until=bindparam("until"))
    for d, where in one_of(x.id, BigInteger()).items()}
# Never a sent row: a sender whose lease ran out may report a refusal or a failure for a row
# another sender has sent meanwhile, and a sent message turned deferred would go out again.
_CLOSE = update(outbox).where(x.id == bindparam("i"), x.state != State.SENT.value).values(
    state=bindparam("st"), updated_at=bindparam("at"),
    last_error=func.coalesce(bindparam("err"), x.last_error),
    attempts=x.attempts + bindparam("n"), tries=x.tries + bindparam("n"),
    next_try=bindparam("next"), claimed_by=None)
_ROW = select(x.subscriber, x.message_id, x.subject, x.included, x.offered).where(
    x.id == bindparam("i"))
_SENT = update(outbox).where(x.id == bindparam("i")).values(
    state=State.SENT.value, updated_at=bindparam("at"), attempts=x.attempts + 1,
    tries=x.tries + 1, claimed_by=None, next_try=None, subject=bindparam("subj"))


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
        packed = _pack(template)  # before the write lock: senders wait while anyone holds it
        with self._ledger.transaction() as db:
            return _insert_set(db, packed, now.isoformat())

    def sets_readable(self) -> bool:
        """Whether the digests' templates can be read at all (one row): a sender that cannot
        read one message's tells the ledger's failure from that row's."""
        try:
            self._ledger.conn.hot(_ANY_SET, {}).fetchone()
        except StoreError:
            return False
        return True

    def load_set(self, set_id: int) -> bytes | None:
        row = self._ledger.conn.hot(_LOAD_SET, {"i": set_id}).fetchone()
        return zlib.decompress(row[0]) if row else None

    @staticmethod
    def _row(q: Queued | OutgoingMessage, run_id: int | None, included: Sequence[str],
             offered: Sequence[str], stamp: str) -> dict[str, object]:
        return {"run_id": run_id, "owner_run": run_id, "next_try": 0, "set_id": q.set_id,
                "subscriber": q.recipient.lower(), "recipient": q.recipient, "name": q.name,
                "unsubscribe_url": q.unsubscribe_url, "token": q.token,
                "message_id": q.message_id, "subject": q.subject,
                "envelope_from": q.envelope_from, "included": " ".join(included),
                "offered": " ".join(offered), "state": State.PENDING.value,
                "created_at": stamp, "updated_at": stamp}

    def add(self, message: OutgoingMessage, *, run_id: int | None, included: Sequence[str],
            offered: Sequence[str], now: datetime) -> int:
        row = self._row(message, run_id, included, offered, now.isoformat())
        with self._ledger.transaction() as db:
            return int(db.hot(_ADD, row).inserted or 0)

    def add_many(self, rows: Sequence[Queued], *, run_id: int, now: datetime,
                 sets: Mapping[int, bytes] | None = None) -> dict[int, int]:
        """One transaction for a batch: nothing in it was sent, so a crash loses nothing the
        next run does not compose again. `sets`: digest templates not stored yet, by the
        provisional (negative) set ids the rows give them; returns their ids in the outbox.
        In the batch's own transaction, because each of the composer's commits empties the
        senders' page caches and holds the write lock they wait for."""
        stamp = now.isoformat()
        packed = {tmp: _pack(t) for tmp, t in (sets or {}).items()}
        made = [self._row(q, run_id, q.included, q.offered, stamp) for q in rows]
        with self._ledger.transaction() as db:  # everything made first: senders wait for it
            ids = {tmp: _insert_set(db, blob, stamp) for tmp, blob in packed.items()}
            for row in made:
                if row["set_id"] in ids:
                    row["set_id"] = ids[row["set_id"]]
                elif isinstance(row["set_id"], int) and row["set_id"] < 0:
                    raise ValueError(f"set {row['set_id']} was never given to the outbox")
            db.hot_many(_ADD, made)
        return ids

    def adopt(self, run_id: int, now: float | None = None,
              dead: Callable[[str], bool] = lambda holder: True) -> list[Entry]:
        """What earlier runs left open becomes this run's to send, first. The caller holds the
        run lock and no sender of an earlier run is alive. A row in the hands of a `send`
        worker that lives (`dead` says no) and whose lease runs is left to it."""
        now = time.time() if now is None else now
        with self._ledger.transaction() as db:
            holders = [h for (h,) in db.execute(select(x.claimed_by).distinct().where(
                x.state == State.SENDING.value, x.claimed_by.is_not(None),
                x.lease_until >= now))]
            gone = [h for h in holders if dead(h)]
            # The lease is judged in the UPDATE itself: on PostgreSQL a worker may claim rows
            # between the look above and this statement, and those are its own.
            db.execute(update(outbox).where(x.state.in_(_OPEN), or_(
                x.state != State.SENDING.value, x.claimed_by.is_(None),
                x.lease_until.is_(None), x.lease_until < now, x.claimed_by.in_(gone))).values(
                owner_run=run_id, next_try=0, tries=0, claimed_by=None,
                state=case((x.state == State.SENDING.value, State.PENDING.value),
                           else_=x.state)))
            rows = db.execute(select(*_COLUMNS).where(
                x.owner_run == run_id, x.state.in_(_OPEN)).order_by(x.id))
        return [_entry(r) for r in rows]

    def claim(self, run_id: int | None, sender: str, limit: int, now: float, lease: float
              ) -> list[Entry]:
        """Up to `limit` of this run's rows (`run_id` None: any run's, for a `send` worker)
        that are due, now in this sender's hands until `now + lease` unless it renews: the
        first due and those after it of the same digest, so a sender builds each digest's
        template once and senders seldom build the same one."""
        with self._ledger.transaction() as db:
            sqlite = db.dialect == "sqlite"
            if run_id is None:
                first_of, stmt = _FIRST_ANY, _CLAIM_ANY if sqlite else _CLAIM_ANY_LOCKING
                params: dict[str, Any] = {"now": now, "limit": limit}
            else:
                first_of, stmt = _FIRST, _CLAIM if sqlite else _CLAIM_LOCKING
                params = {"run": run_id, "now": now, "limit": limit}
            first = db.hot(first_of, params).fetchone()
            if first is None:
                return []
            rows = db.hot(stmt, {**params, "first": first[0], "set": first[1]}).fetchall()
            if rows:
                db.hot(_TAKE[db.dialect], {"ids": values_of(db.dialect, [r[0] for r in rows]),
                                           "by": sender, "until": now + lease})
        return [_entry(r) for r in rows]

    def renew(self, sender: str, until: float) -> int:
        """The sender's lease on the rows it holds, pushed to `until`; how many it holds."""
        with self._ledger.transaction() as db:
            return int(db.execute(_RENEW, {"by": sender, "until": until}).rowcount)

    def due(self, run_id: int | None) -> tuple[int, float | None]:
        """This run's rows (None: any run's, or left pending by one) in hand or due later,
        and the earliest time one is due."""
        live = or_(x.state == State.SENDING.value, x.next_try.is_not(None))
        if run_id is None:
            where = [x.state.in_(_OPEN), or_(live, x.state == State.PENDING.value)]
        else:
            where = [x.owner_run == run_id, x.state.in_(_OPEN), live]
        row = self._ledger.conn.execute(
            select(func.count(), func.min(x.next_try)).where(*where)).fetchone()
        return int(row[0]), row[1]

    def _close(self, entry_id: int, state: State, now: datetime, error: str | None, *,
               attempt: bool, next_try: float | None = None) -> None:
        with self._ledger.transaction() as db:
            db.hot(_CLOSE, {"i": entry_id, "st": state.value, "at": now.isoformat(),
                                "err": error, "n": int(attempt), "next": next_try})

    def deferred(self, entry_id: int, now: datetime, error: str,
                 next_try: float | None = None) -> None:
        """Refused for now: tried again at `next_try` in this run, or (None) by the next."""
        self._close(entry_id, State.DEFERRED, now, error, attempt=True, next_try=next_try)

    def failed(self, entry_id: int, now: datetime, error: str, *, attempt: bool = True
               ) -> None:
        self._close(entry_id, State.FAILED, now, error, attempt=attempt)

    def cancelled(self, entry_id: int, now: datetime, reason: str) -> None:
        self._close(entry_id, State.CANCELLED, now, reason, attempt=False)

    def release(self, entry_ids: Sequence[int], *, park: bool = False,
                by: str | None = None) -> None:
        """Back to the queue untried: due at once, or (`park`) left for the next run. `by`:
        only while that sender still holds them (after a lease ran out, another may)."""
        if entry_ids:
            mine = x.claimed_by == by if by is not None else x.id.is_not(None)
            with self._ledger.transaction() as db:
                db.execute(update(outbox).where(
                    x.state == State.SENDING.value, mine, x.id.in_(list(entry_ids))).values(
                    state=case((x.attempts > 0, State.DEFERRED.value),
                               else_=State.PENDING.value),
                    claimed_by=None, next_try=None if park else 0))

    def return_claimed(self, sender: str, why: str) -> int:
        """A dead sender's rows: back in the queue for the next run, same Message-ID."""
        with self._ledger.transaction() as db:
            return db.execute(update(outbox).where(
                x.state == State.SENDING.value, x.claimed_by == sender).values(
                state=State.PENDING.value, claimed_by=None, next_try=None,
                last_error=why)).rowcount

    def park(self, run_id: int, senders: str | None = None) -> int:
        """The end of a run: whatever it did not send waits for the next one; nothing its own
        senders (names starting `senders`) held stays "sending" (they are gone). Rows a `send`
        worker holds stay in its hands."""
        own = or_(x.state != State.SENDING.value, x.claimed_by.is_(None),
                  x.claimed_by.startswith(senders, autoescape=True)) \
            if senders is not None else x.id.is_not(None)
        with self._ledger.transaction() as db:
            return db.execute(update(outbox).where(
                x.owner_run == run_id, x.state.in_(_OPEN), own).values(
                next_try=None, claimed_by=None,
                state=case((x.state == State.SENDING.value, State.PENDING.value),
                           else_=x.state))).rowcount

    def forget_sent(self, run_id: int) -> int:
        """The end of a run, once its report has read them: the rows of the messages it sent,
        which nothing else reads (the deliveries keep what `history` and `explain` show).
        Kept for the offer window, they made the outbox and its six indexes weeks long
        instead of a day, and every run slower with them (bench/year.py: a run after 113
        days 1.41 -> 1.22 s of CPU). What `send` workers send later goes with the prune."""
        with self._ledger.transaction() as db:
            return int(db.execute(delete(outbox).where(
                x.owner_run == run_id, x.state == State.SENT.value)).rowcount)

    def fates(self, run_id: int) -> dict[str, Fate]:
        rows = self._ledger.conn.execute(
            select(x.message_id, x.recipient, x.state, func.coalesce(x.last_error, ""),
                   x.included, x.attempts).where(x.owner_run == run_id))
        return {mid: Fate(rcpt, State(st), err, len(inc.split()), a)
                for mid, rcpt, st, err, inc, a in rows}

    def sent(self, entry_id: int, now: datetime, run_id: int | None,
             subject: str | None = None, entry: Entry | None = None) -> None:
        """The server accepted it: the delivery, with the papers it offered, and the outbox
        state land in one transaction. `subject`: as it went out (the row may not know it yet);
        `entry`: the row as the sender claimed it, which spares reading it again."""
        stamp = now.isoformat()
        with self._ledger.transaction() as db:
            if entry is None:
                row = db.hot(_ROW, {"i": entry_id}).fetchone()
            else:
                row = (entry.recipient.lower(), entry.message_id, entry.subject,
                       " ".join(entry.included), " ".join(entry.offered))
            subscriber, message_id, stored, included, offered = row
            subject = subject or stored
            chosen = set(included.split())
            # Already recorded under this Message-ID (a second sender sent it again after the
            # first one's lease ran out): one delivery, the same Message-ID.
            db.hot(_delivery(db.dialect), {
                "run_id": run_id, "subscriber": subscriber, "message_id": message_id,
                "subject": subject, "sent_at": stamp, "papers": len(chosen),
                "included": " ".join(sorted(chosen)),
                "over_cap": " ".join(sorted(set(offered.split()) - chosen)) or None})
            db.hot(_SENT, {"i": entry_id, "at": stamp, "subj": subject})

    def open_entries(self) -> list[Entry]:
        """What is unsent: pending, in a sender's hands, or deferred."""
        rows = self._ledger.conn.execute(select(*_COLUMNS).where(x.state.in_(_OPEN))
                                         .order_by(x.id))
        return [_entry(r) for r in rows]

    def prune_sets(self) -> None:
        """Templates no unsent message needs any more."""
        with self._ledger.transaction() as db:
            db.execute(delete(outbox_sets).where(outbox_sets.c.id.not_in(
                select(x.set_id).where(x.set_id.is_not(None), x.state.in_(_OPEN)))))

    def failed_in_a_row(self, subscriber: str, limit: int) -> bool:
        """Whether this address's last `limit` messages were refused for good with no
        delivery since the oldest of them. Its failures come from the outbox's index on the
        subscriber; the deliveries (which outlive the sent messages' outbox rows, and have no
        index by subscriber) are read only for an address with `limit` failures kept, back
        from the newest to the oldest of those failures: a wave of bounces costs a look-up
        each, and only an address about to be suppressed a read of a few runs' records."""
        key = subscriber.lower()
        conn = self._ledger.conn
        failed = [r[0] for r in conn.execute(
            select(x.updated_at).where(x.subscriber == key, x.state == State.FAILED.value)
            .order_by(x.updated_at.desc()).limit(limit))]
        if len(failed) < limit:
            return False
        oldest = failed[-1]
        d = deliveries.c
        last_sent = conn.execute(select(d.sent_at).where(
            d.subscriber == key, sent_since(conn, datetime.fromisoformat(oldest)))
            .order_by(d.id.desc()).limit(1)).scalar()
        return last_sent is None or oldest >= last_sent

    def counts(self) -> dict[str, int]:
        rows = self._ledger.conn.execute(select(x.state, func.count()).group_by(x.state))
        return {state: n for state, n in rows}

    def problems(self, limit: int = 5) -> list[tuple[str, str, str, str]]:
        """The latest messages that failed or were cancelled: (when, to, state, why)."""
        rows = self._ledger.conn.execute(
            select(x.updated_at, x.recipient, x.state, func.coalesce(x.last_error, ""))
            .where(x.state.in_([State.FAILED.value, State.CANCELLED.value]))
            .order_by(x.id.desc()).limit(limit))
        return [tuple(r) for r in rows]


def _pack(template: bytes) -> bytes:
    # Level 1: half of level 6's time for a template of 50 KB, 8.4 KB instead of 6.4 (the
    # rows live until the run's end); it is the composer's busiest work after rendering.
    return zlib.compress(template, 1)


def _insert_set(db: Db, packed: bytes, stamp: str) -> int:
    stmt = _ADD_SET_PG if db.dialect == "postgresql" else _ADD_SET
    return int(db.hot(stmt, {"at": stamp, "t": packed}).inserted or 0)


_DELIVERIES = {d: insert_for(d, deliveries).on_conflict_do_nothing(
    index_elements=[deliveries.c.message_id]) for d in ("sqlite", "postgresql")}


def _delivery(dialect: str) -> Executable:
    return _DELIVERIES[dialect]  # type: ignore[no-any-return]
