"""What the ledger keeps, and for how long, so it stops growing once the policy's window has
passed (issue 11, point 3):

- an offer (this paper went to this subscriber: never again) only while the paper can come
  back in a feed window: until it has been out of every fetched feed for `offer_days` (the
  longest lookback, a week for weekly digests, plus a margin). `offered_ids` then reads a
  subscriber's last few weeks, not their whole history;
- a sent email's record (when, to whom, Message-ID, subject, the papers' ids) and the papers'
  titles, the messages that failed or were cancelled and why, and the runs: `keep_history`;
- a sent message's outbox row (its name, link, token: what rebuilt it) only `offer_days`, and
  its digest template (the body) not at all once nothing unsent needs it;
- suppressions (unsubscribes, bounces) for ever.

Pruning runs at the end of each run and by `digest-mailer db prune`, each rule in its own
short transaction, so senders and the web service are never held up for long."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, delete, exists, select

from digest_mailer.models import MessageState
from digest_mailer.store.tables import deliveries, offers, outbox, papers, runs

if TYPE_CHECKING:
    from digest_mailer.store.ledger import Ledger

logger = logging.getLogger(__name__)
_DONE = [MessageState.FAILED.value, MessageState.CANCELLED.value]
# A run's messages are all sent (or parked) within this of its start: older runs without
# messages left can go.
_RUN_SLACK = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Retention:
    offer_days: float  # the feed window plus a margin
    history_days: float

    def describe(self) -> str:
        return (f"offers kept {self.offer_days:g} days after a paper was last in a feed; sent "
                f"emails, failures and runs kept {self.history_days:g} days; bodies dropped "
                "once sent; suppressions kept")


@dataclass(frozen=True, slots=True)
class Pruned:
    offers: int = 0
    deliveries: int = 0
    messages: int = 0
    papers: int = 0
    runs: int = 0

    @property
    def total(self) -> int:
        return self.offers + self.deliveries + self.messages + self.papers + self.runs


def prune(ledger: Ledger, policy: Retention, now: datetime) -> Pruned:
    """Everything the policy no longer keeps, deleted; what was deleted, counted."""
    window = (now - timedelta(days=policy.offer_days)).isoformat()
    history = (now - timedelta(days=policy.history_days)).isoformat()
    p, o, d, x, r = papers.c, offers.c, deliveries.c, outbox.c, runs.c
    gone = select(p.id).where(p.last_seen < window)
    with ledger.transaction() as db:
        n_offers = db.execute(delete(offers).where(o.paper_id.in_(gone))).rowcount
    # An offer left (a paper in the feeds for longer than the history is kept) still holds
    # its delivery: only papers first seen before the cut can have one that old.
    held = select(o.delivery_id).join(papers, p.id == o.paper_id).where(
        p.last_seen >= window, p.first_seen < history)
    with ledger.transaction() as db:
        n_deliveries = db.execute(delete(deliveries).where(
            d.sent_at < history, d.id.not_in(held))).rowcount
    with ledger.transaction() as db:
        n_messages = db.execute(delete(outbox).where(
            x.state == MessageState.SENT.value, x.updated_at < window)).rowcount
        n_messages += db.execute(delete(outbox).where(
            x.state.in_(_DONE), x.updated_at < history)).rowcount
    with ledger.transaction() as db:
        n_papers = db.execute(delete(papers).where(
            p.last_seen < history, ~exists().where(o.paper_id == p.id))).rowcount
    with ledger.transaction() as db:
        n_runs = db.execute(delete(runs).where(
            r.started_at < (now - timedelta(days=policy.history_days) - _RUN_SLACK).isoformat(),
            r.outcome != "running",
            ~exists().where(d.run_id == r.id),
            ~exists().where(and_(x.run_id == r.id)),
            ~exists().where(x.owner_run == r.id))).rowcount
    ledger.outbox.prune_sets()
    done = Pruned(n_offers, n_deliveries, n_messages, n_papers, n_runs)
    if done.total:
        logger.info("%s: pruned %d offer(s), %d sent email record(s), %d outbox row(s), "
                    "%d paper(s), %d run(s)", ledger.path, *(
                        done.offers, done.deliveries, done.messages, done.papers, done.runs))
    return done
