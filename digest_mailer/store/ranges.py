"""Recent rows as a range of ids. Deliveries and outbox rows are numbered in the order they
are recorded, so the rows since a time start after one id, found by bisecting: no index on a
time, and none by subscriber (revision 0007), which every message a sender records and every
prune would pay for, more as the history kept grows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, func, select, true

from digest_mailer.store.tables import deliveries

if TYPE_CHECKING:
    from digest_mailer.store.db import Db

# A delivery is sent after its papers were first seen, but the two times may come from two
# hosts' clocks (a `send` worker's, the run's): looking a day further back covers any skew.
OFFER_SKEW = timedelta(days=1)
CHUNK = 20_000


# The rows a probe of the bisection looks at: a key is trusted only where the rows around it
# agree. One host whose clock is days slow (a skew the README rules out, but a fleet can have)
# wrote keys too early: a probe of one row could land on it and put the bound after every
# row the others wrote since (review finding), where the look-up by an index on the key only
# ever missed that host's own rows. The largest key of a window errs the other way, towards an
# earlier bound: a read of a few rows more, a prune of a few rows less.
WINDOW = 16


def last_below(conn: Db, ident: ColumnElement[int], key: ColumnElement[Any],
               bound: object) -> int | None:
    """The id of the last row whose `key` is below `bound`, for a key that grows with the id
    (give or take the microseconds between two senders' commits), found by bisecting the
    ids: some twenty look-ups by primary key of WINDOW rows each, where an index on the key
    would cost every message a sender records. Where a host's clock made keys too early,
    an earlier id, or one of those rows. None when the first row is not below it."""
    # Apart: SQLite reads both ends of the key in one look-up each only for a lone min()
    # or max(); together they made it read the whole table (every delivery, every offer).
    lo = conn.execute(select(func.min(ident))).scalar()
    hi = conn.execute(select(func.max(ident))).scalar()
    if lo is None or hi is None:
        return None

    def at_or_after(n: int) -> tuple[int, Any, int]:
        """The first id from n on, the largest key of the WINDOW rows from it, and the last
        of their ids."""
        rows = conn.execute(select(ident, key).where(ident >= n).order_by(ident)
                            .limit(WINDOW)).fetchall()
        return int(rows[0][0]), max(r[1] for r in rows), int(rows[-1][0])

    def below_from(after: int | None) -> int | None:
        """The last id of the rows below the bound that follow `after` (the first row, when
        None) without a break, among WINDOW rows: the boundary inside a window."""
        rows = select(ident, key).order_by(ident).limit(WINDOW)
        last = after
        for ident_, key_ in conn.execute(rows if after is None else rows.where(ident > after)):
            if key_ >= bound:
                break
            last = int(ident_)
        return last

    _, value, lo_last = at_or_after(lo)
    if value >= bound:
        return below_from(None)
    newest = conn.execute(select(key).where(ident <= hi).order_by(ident.desc())
                          .limit(WINDOW)).fetchall()
    if max(r[0] for r in newest) < bound:
        return int(hi)
    # Invariant: the window from lo (to lo_last) is below the bound; hi's, or a later one,
    # is not. When they meet, the row after lo_last is the first not below it.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found, value, last = at_or_after(mid)
        if found >= hi or value >= bound:
            hi = mid if found >= hi else found
        else:
            lo, lo_last = found, last
    return below_from(lo_last)


def _start(conn: Db, since: datetime | None) -> tuple[int | None, str | None]:
    """For deliveries sent since `since`, give or take OFFER_SKEW: the id after which to
    read (None: from the first), and the time to test each row against."""
    if since is None:
        return None, None
    start = since - OFFER_SKEW
    d = deliveries.c
    # Ids follow sent_at only as closely as the hosts' clocks agree: bisect a skew earlier.
    return last_below(conn, d.id, d.sent_at, (start - OFFER_SKEW).isoformat()), \
        start.isoformat()


def sent_since(conn: Db, since: datetime | None) -> ColumnElement[bool]:
    """Deliveries sent since `since` (every one kept when None), give or take OFFER_SKEW: the
    ids after the last one sent well before it, and the exact test on the time. For a
    statement whose other conditions keep its result small (one subscriber's)."""
    last, start = _start(conn, since)
    d = deliveries.c
    if start is None:
        return true()
    recent = d.sent_at >= start
    return recent if last is None else and_(d.id > last, recent)


def read_sent_since(conn: Db, columns: Sequence[ColumnElement[Any]], since: datetime | None,
                    *where: ColumnElement[bool]) -> Iterator[Any]:
    """The deliveries sent since `since` (as `sent_since`), CHUNK ids a statement: a driver
    reads a statement's rows whole, and a run of 100,000 subscribers reads a week of theirs."""
    last, start = _start(conn, since)
    d = deliveries.c
    top = conn.execute(select(func.max(d.id))).scalar()
    if top is None:
        return
    at = last if last is not None else int(conn.execute(select(func.min(d.id))).scalar()) - 1
    timed = () if start is None else (d.sent_at >= start,)
    while at < top:
        yield from conn.execute(select(*columns).where(d.id > at, d.id <= at + CHUNK, *timed,
                                                       *where))
        at += CHUNK
