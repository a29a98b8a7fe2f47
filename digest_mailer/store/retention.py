"""What the ledger keeps, and for how long, so it stops growing once the policy's window has
passed (issue 11, point 3):

- an offer (this paper went to this subscriber: never again) only while the paper can come
  back in a feed window: until it has been out of every fetched feed for `offer_days` (the
  longest lookback, a week for weekly digests, plus a margin);
- a sent email's record (when, to whom, Message-ID, subject, the papers' ids) and the papers'
  titles, the messages that failed or were cancelled and why: `keep_history`;
- a sent message's outbox row (its name, link, token: what rebuilt it) only `offer_days`, and
  its digest template (the body) not at all once nothing unsent needs it;
- suppressions (unsubscribes, bounces) and runs (a row a day) for ever: deleting a run would
  make the database scan the deliveries and the outbox that reference it.

Pruning runs at the end of each run and by `digest-mailer db prune`, each rule in its own
short transaction, so senders and the web service are never held up for long. What it reads
does not grow with the history: offers, deliveries and outbox rows are numbered in the order
they were recorded, so the old ones are a range of ids, found by bisecting (no index on a
time, which every message a sender records would pay for)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, delete, func, select

from digest_mailer.models import MessageState
from digest_mailer.store.tables import deliveries, offers, outbox, papers

if TYPE_CHECKING:
    from digest_mailer.store.ledger import Ledger

logger = logging.getLogger(__name__)
_DONE = [MessageState.FAILED.value, MessageState.CANCELLED.value]
_SLACK = 1000  # deliveries: more than the senders of any fleet commit at one time


@dataclass(frozen=True, slots=True)
class Retention:
    offer_days: float  # the feed window plus a margin
    history_days: float

    def describe(self) -> str:
        return (f"offers kept {self.offer_days:g} days after a paper was last in a feed; sent "
                f"emails and failures kept {self.history_days:g} days; bodies dropped once "
                "sent; suppressions and runs kept")


@dataclass(frozen=True, slots=True)
class Pruned:
    offers: int = 0
    deliveries: int = 0
    messages: int = 0
    papers: int = 0

    @property
    def total(self) -> int:
        return self.offers + self.deliveries + self.messages + self.papers


def _last_below(ledger: Ledger, ident: ColumnElement[int], key: ColumnElement[Any],
                bound: object) -> int | None:
    """The id of the last row whose `key` is below `bound`, for a key that grows with the id
    (give or take the microseconds between two senders' commits), found by bisecting the ids:
    some twenty look-ups by primary key, where an index on the key would cost every message
    a sender records. None when the first row is not below it."""
    conn = ledger.conn
    # Apart: SQLite reads both ends of the key in one look-up each only for a lone min()
    # or max(); together they made it read the whole table (every delivery, every offer).
    lo = conn.execute(select(func.min(ident))).scalar()
    hi = conn.execute(select(func.max(ident))).scalar()
    if lo is None or hi is None:
        return None

    def at_or_after(n: int) -> tuple[int, Any]:
        found = conn.execute(select(ident, key).where(ident >= n).order_by(ident)
                             .limit(1)).fetchone()
        return int(found[0]), found[1]

    if at_or_after(lo)[1] >= bound:
        return None
    if at_or_after(hi)[1] < bound:
        return int(hi)
    # Invariant: the row at or after lo is below the bound; the one at hi is not.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found, value = at_or_after(mid)
        if found >= hi or value >= bound:
            hi = mid if found >= hi else found
        else:
            lo = found
    return int(lo)


def _last_before(ledger: Ledger, cutoff: str) -> int | None:
    """The last delivery sent before `cutoff`."""
    return _last_below(ledger, deliveries.c.id, deliveries.c.sent_at, cutoff)


def _last_offer_of(ledger: Ledger, delivery: int) -> int | None:
    """The last offer recorded with a delivery up to this one. Offers are numbered as they are
    recorded, each with its delivery, in one transaction."""
    return _last_below(ledger, offers.c.id, offers.c.delivery_id, delivery + 1)


def _last_offer_before(ledger: Ledger, cutoff: str) -> int | None:
    """The last offer recorded before `cutoff`: by its delivery, the last sent before it (or,
    when the history kept is shorter than the window, those already pruned)."""
    last = _last_before(ledger, cutoff)
    if last is None:
        first = ledger.conn.execute(select(func.min(deliveries.c.id))).scalar()
        if first is None:  # no history at all: every offer's delivery is gone
            return ledger.conn.execute(select(func.max(offers.c.id))).scalar()  # type: ignore
        last = int(first) - 1
    return _last_offer_of(ledger, last)


def prune(ledger: Ledger, policy: Retention, now: datetime) -> Pruned:
    """Everything the policy no longer keeps, deleted; what was deleted, counted."""
    window = (now - timedelta(days=policy.offer_days)).isoformat()
    history = (now - timedelta(days=policy.history_days)).isoformat()
    p, o, d, x = papers.c, offers.c, deliveries.c, outbox.c
    # Every offer but those of papers seen in a feed within the window (a paper the ledger
    # never saw cannot come back either).
    # Only the offers recorded before the window are read: a range of ids, about a day's
    # worth, whatever the history (an offer of a stale paper recorded later, by a message
    # that waited, goes in a later run).
    recent = select(p.id).where(p.last_seen >= window)
    old = _last_offer_before(ledger, window)
    n_offers = 0
    if old is not None:
        with ledger.transaction() as db:
            n_offers = db.execute(delete(offers).where(o.id <= old, o.paper_id.not_in(recent))
                                  ).rowcount
    # An offer left (a paper in the feeds for longer than the history is kept) still holds
    # its delivery: only papers first seen before the cut can have one that old, and only
    # offers recorded up to the last delivery deleted (give or take the senders that commit
    # at the same time on PostgreSQL: _SLACK). Usually none; looked up first, so the offers
    # are read only for those.
    lasting = [r[0] for r in ledger.conn.execute(
        select(p.id).where(p.last_seen >= window, p.first_seen < history))]
    last_old = _last_before(ledger, history)
    n_deliveries = 0
    if last_old is not None:
        held = select(o.delivery_id).where(
            o.id <= (_last_offer_of(ledger, last_old + _SLACK) or 0), o.paper_id.in_(lasting))
        # What still references a delivery is `held` (offers.delivery_id is not a declared
        # key: checking it would scan the offers for every delivery deleted, and an index on
        # it would cost every message a sender records).
        with ledger.transaction() as db:
            n_deliveries = db.execute(delete(deliveries).where(
                d.id <= last_old, *([d.id.not_in(held)] if lasting else []))).rowcount
    # The outbox's rows are numbered as a run composes them, all with the run's time: those
    # made before a cut are a range of ids (the rest of it is a day's rows, and the few
    # failures kept for the history).
    sent_before = _last_below(ledger, x.id, x.created_at, window)
    done_before = _last_below(ledger, x.id, x.created_at, history)
    n_messages = 0
    with ledger.transaction() as db:
        if sent_before is not None:
            n_messages += db.execute(delete(outbox).where(
                x.id <= sent_before, x.state == MessageState.SENT.value,
                x.updated_at < window)).rowcount
        if done_before is not None:
            n_messages += db.execute(delete(outbox).where(
                x.id <= done_before, x.state.in_(_DONE), x.updated_at < history)).rowcount
    with ledger.transaction() as db:
        # Their offers went above (the earlier of the two cuts: a shorter history must not
        # forget a paper whose offers the window still holds).
        n_papers = db.execute(delete(papers).where(p.last_seen < min(history, window))
                              ).rowcount
    ledger.outbox.prune_sets()
    done = Pruned(n_offers, n_deliveries, n_messages, n_papers)
    if done.total:
        logger.info("%s: pruned %d offer(s), %d sent email record(s), %d outbox row(s), "
                    "%d paper(s)", ledger.path, done.offers, done.deliveries, done.messages,
                    done.papers)
    return done
