"""Recent rows as a range of ids. Deliveries and outbox rows are numbered in the order they
are recorded, so the rows since a time start after one id, found by bisecting: no index on a
time, and none by subscriber (revision 0007), which every message a sender records and every
prune would pay for, more as the history kept grows."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, func, select, true

from digest_mailer.store.tables import deliveries

if TYPE_CHECKING:
    from digest_mailer.store.db import Db

# A delivery is sent after its papers were first seen, but the two times may come from two
# hosts' clocks (a `send` worker's, the run's): looking a day further back covers any skew.
OFFER_SKEW = timedelta(days=1)


def last_below(conn: Db, ident: ColumnElement[int], key: ColumnElement[Any],
               bound: object) -> int | None:
    """The id of the last row whose `key` is below `bound`, for a key that grows with the id
    (give or take the microseconds between two senders' commits), found by bisecting the ids:
    some twenty look-ups by primary key, where an index on the key would cost every message
    a sender records. None when the first row is not below it."""
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


def sent_since(conn: Db, since: datetime | None) -> ColumnElement[bool]:
    """Deliveries sent since `since` (every one kept when None), give or take OFFER_SKEW: the
    ids after the last one sent well before it, and the exact test on the time."""
    d = deliveries.c
    if since is None:
        return true()
    start = since - OFFER_SKEW
    # Ids follow sent_at only as closely as the hosts' clocks agree: bisect a skew earlier.
    last = last_below(conn, d.id, d.sent_at, (start - OFFER_SKEW).isoformat())
    recent = d.sent_at >= start.isoformat()
    return recent if last is None else and_(d.id > last, recent)
