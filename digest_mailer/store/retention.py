"""What the ledger keeps, and for how long, so it stops growing once the policy's window has
passed (issue 11, point 3):

- a sent email's record (when, to whom, Message-ID, subject, the papers' ids: in the email,
  and offered over its cap), the messages that failed or were cancelled and why:
  `keep_history`, and at least `offer_days` (the longest lookback, a week for weekly digests,
  plus a margin): the record is also what says "this paper went to this subscriber: never
  again" (revision 0006), which must last while the paper can come back in a feed window. A
  record older than that is kept while a paper it offered was in a feed within the window;
- a paper's row (title, first and last sighting): the history plus `offer_days` after it was
  last in a feed (an email can go out after its papers left the feeds);
- a sent message's outbox row (its name, link, token: what rebuilt it) until the end of the
  run that owns it (`Outbox.forget_sent`); one sent after that (by a `send` worker once its
  run ended, or left by a run that crashed): `offer_days`. Its digest template (the body)
  not at all once nothing unsent needs it;
- suppressions (unsubscribes, bounces) and runs (a row a day) for ever: deleting a run would
  make the database scan the deliveries and the outbox that reference it.

Pruning runs at the end of each run and by `digest-mailer db prune`, each rule in its own
short transaction, so senders and the web service are never held up for long. What it reads
does not grow with the history: deliveries and outbox rows are numbered in the order
they were recorded, so the old ones are a range of ids, found by bisecting (no index on a
time, which every message a sender records would pay for)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from digest_mailer.models import MessageState
from digest_mailer.store.ledger import papers_offered
from digest_mailer.store.ranges import OFFER_SKEW, last_below
from digest_mailer.store.tables import deliveries, outbox, papers

if TYPE_CHECKING:
    from digest_mailer.store.ledger import Ledger

logger = logging.getLogger(__name__)
_DONE = [MessageState.FAILED.value, MessageState.CANCELLED.value]
_CHUNK = 500  # ids a statement (SQLite's limit on parameters is far above it)


@dataclass(frozen=True, slots=True)
class Retention:
    offer_days: float  # the feed window plus a margin
    history_days: float

    def describe(self) -> str:
        return (f"sent emails and failures kept {self.kept_days:g} days (and while a paper "
                f"they offered was in a feed in the last {self.offer_days:g} days: it is not "
                "offered again); bodies dropped once sent; suppressions and runs kept")

    @property
    def kept_days(self) -> float:
        """The history: never shorter than the offers, which the deliveries hold."""
        return max(self.history_days, self.offer_days)


@dataclass(frozen=True, slots=True)
class Pruned:
    deliveries: int = 0
    messages: int = 0
    papers: int = 0

    @property
    def total(self) -> int:
        return self.deliveries + self.messages + self.papers


def _last_before(ledger: Ledger, cutoff: str) -> int | None:
    """The last delivery sent before `cutoff`."""
    return last_below(ledger.conn, deliveries.c.id, deliveries.c.sent_at, cutoff)


def _unheld(ledger: Ledger, last: int, lasting: set[str]) -> list[int]:
    """Of the deliveries up to `last`, those that offered no paper in `lasting`. Read only when
    there is such a paper (one in the feeds for longer than the history is kept): rare."""
    d = deliveries.c
    return [i for i, included, over_cap in ledger.conn.execute(
                select(d.id, d.included, d.over_cap).where(d.id <= last))
            if lasting.isdisjoint(papers_offered(included, over_cap))]


def prune(ledger: Ledger, policy: Retention, now: datetime) -> Pruned:
    """Everything the policy no longer keeps, deleted; what was deleted, counted."""
    cut = now - timedelta(days=policy.kept_days)
    window = (now - timedelta(days=policy.offer_days)).isoformat()
    history = cut.isoformat()
    p, d, x = papers.c, deliveries.c, outbox.c
    # A delivery that offered a paper still in the feeds is kept: it is what stops the paper
    # going to that subscriber again. Only papers first seen before the cut can have one.
    lasting = {r[0] for r in ledger.conn.execute(select(p.id).where(
        p.last_seen >= window, p.first_seen < (cut + OFFER_SKEW).isoformat()))}
    last_old = _last_before(ledger, history)
    n_deliveries = 0
    if last_old is not None and not lasting:
        with ledger.transaction() as db:
            n_deliveries = db.execute(delete(deliveries).where(d.id <= last_old)).rowcount
    elif last_old is not None:
        gone = _unheld(ledger, last_old, lasting)
        for at in range(0, len(gone), _CHUNK):
            with ledger.transaction() as db:
                n_deliveries += db.execute(delete(deliveries).where(
                    d.id.in_(gone[at:at + _CHUNK]))).rowcount
    # The outbox's rows are numbered as a run composes them, all with the run's time: those
    # made before a cut are a range of ids (the rest of it is a day's rows, and the few
    # failures kept for the history).
    sent_before = last_below(ledger.conn, x.id, x.created_at, window)
    done_before = last_below(ledger.conn, x.id, x.created_at, history)
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
        # Out of the feeds for longer than the history and then the window: a message can
        # go out after its papers were last seen (it waited, deferred or parked), and its
        # record is what `offered_ids` finds from the paper's first sighting. Were the paper
        # forgotten first, it would be new again if it came back (review finding).
        n_papers = db.execute(delete(papers).where(p.last_seen < (now - timedelta(
            days=policy.kept_days + policy.offer_days)).isoformat())).rowcount
    ledger.outbox.prune_sets()
    done = Pruned(n_deliveries, n_messages, n_papers)
    if done.total:
        logger.info("%s: pruned %d sent email record(s), %d outbox row(s), %d paper(s)",
                    ledger.path, done.deliveries, done.messages, done.papers)
    return done
