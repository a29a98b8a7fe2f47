"""The ledger: papers seen, what was offered and sent to whom, and runs, on SQLite or
PostgreSQL (store/engines.py).

Each delivery is committed the moment the backend accepted it, in one transaction with the
papers it offered, so a crash never loses a delivery that happened nor records one that did not.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import (
    Text,
    bindparam,
    case,
    delete,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
    update,
)

from digest_mailer.errors import StoreError
from digest_mailer.models import MessageState, Paper, RunState
from digest_mailer.store import schema
from digest_mailer.store.db import Db
from digest_mailer.store.engines import StoreTarget, make_engine
from digest_mailer.store.outbox import Outbox
from digest_mailer.store.ranges import read_sent_since, sent_since
from digest_mailer.store.sql import insert_for, one_of, values_of
from digest_mailer.store.tables import (
    METADATA,
    deliveries,
    outbox,
    papers,
    runs,
    suppressions,
)

logger = logging.getLogger(__name__)
_MAX_INT = 2**63 - 1  # SQLite's INTEGER
_OPEN = (MessageState.PENDING.value, MessageState.SENDING.value, MessageState.DEFERRED.value)

# Papers first seen longer ago than this before a run are "old" (`Ledger.offers`): a feed
# window of a week (weekly digests) and a day.
RECENT = timedelta(days=8)
MAX_NAMED = 32  # old papers looked for by name in the records; more, and all are read
# A delivery's offered ids, each between spaces, for a look for one by name.
_OFFERED_IDS = (literal(" ") + func.coalesce(deliveries.c.included, "") + literal(" ")
                + func.coalesce(deliveries.c.over_cap, "") + literal(" "))


def papers_offered(included: str | None, over_cap: str | None) -> list[str]:
    """The ids a delivery offered, in its email and over its cap (each column the ids joined
    by spaces, or empty)."""
    return f"{included or ''} {over_cap or ''}".split()


@dataclass(frozen=True, slots=True)
class Offers:
    """What a run may not offer again, read once for all its subscribers (`Ledger.offers`):
    per subscriber (lower-cased), the run's candidate papers that a delivery offered or an
    unsent message holds; and who has a message waiting in the outbox."""

    # Tuples, not sets: a tenth of the memory, for a run of 100,000 subscribers.
    held: Mapping[str, tuple[str, ...]]
    waiting: frozenset[str]

    def of(self, subscriber: str, among: Iterable[str]) -> frozenset[str]:
        found = self.held.get(subscriber.lower())
        return frozenset(found).intersection(among) if found else frozenset()


NO_OFFERS = Offers({}, frozenset())

# Of the papers given.
_FIRST_SEEN = {d: select(papers.c.id, papers.c.first_seen).where(where)
               for d, where in one_of(papers.c.id, Text()).items()}
_HELD = select(outbox.c.offered).where(outbox.c.subscriber == bindparam("s"),
                                       outbox.c.state.in_(_OPEN))
_CONTROL = select(runs.c.hold_until, runs.c.trouble, runs.c.blocked, runs.c.cause).where(
    runs.c.id == bindparam("r"))
_SUPPRESSED = select(suppressions.c.reason).where(suppressions.c.subscriber == bindparam("s"))


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


def _target(where: Path | str | StoreTarget) -> StoreTarget:
    if isinstance(where, StoreTarget):
        return where
    if isinstance(where, Path):
        return StoreTarget.sqlite(where)
    return StoreTarget.parse(where)


class Ledger:
    """One connection. Open with `Ledger.open` (read-write) or `Ledger.open_readonly`."""

    def __init__(self, db: Db, target: StoreTarget, *, readonly: bool) -> None:
        self._conn = db
        self.target = target
        self.path = target.label
        self.readonly = readonly
        self.schema_before: schema.Schema | None = None  # where `open` found it

    @classmethod
    def open(cls, where: Path | str | StoreTarget) -> Ledger:
        target = _target(where)
        path = target.sqlite_path
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                from digest_mailer.store.db import store_error
                raise store_error(str(path), e, "open") from e
        db = Db(make_engine(target), target.label)
        ledger = cls(db, target, readonly=False)
        try:
            ledger.schema_before = schema.prepare(db, target)
        except BaseException:
            db.close()
            raise
        return ledger

    @classmethod
    def open_readonly(cls, where: Path | str | StoreTarget) -> Ledger:
        """For dry runs: reads what exists and never writes. A missing or empty ledger reads
        as an empty one; a SQLite ledger of an older schema is read through an upgraded copy
        in memory (the file is upgraded by the first real run, or `digest-mailer db
        upgrade`)."""
        target = _target(where)
        path = target.sqlite_path
        if path is not None and not path.exists():
            return cls._empty(target)
        db = Db(make_engine(target, readonly=True), target.label)
        try:
            found = schema.check_readable(db, target)
            if not found.has_tables:
                db.close()
                return cls._empty(target)
            if found.current:
                return cls(db, target, readonly=True)
            if path is None:
                raise StoreError(f"{target.label}: the ledger is at {found.describe()}; this "
                                 f"digest-mailer reads revision {schema.HEAD}",
                                 hint="run `digest-mailer db upgrade` (take a pg_dump first)")
            memory = Db(make_engine(StoreTarget("sqlite")), target.label)
            try:
                db.raw.backup(memory.raw)
                schema.upgrade(memory)
            except BaseException:
                memory.close()
                raise
            db.close()
            return cls(memory, target, readonly=True)
        except BaseException:
            db.close()
            raise

    @classmethod
    def _empty(cls, target: StoreTarget) -> Ledger:
        memory = Db(make_engine(StoreTarget("sqlite")), target.label)
        with memory.transaction():
            METADATA.create_all(memory.conn)
        return cls(memory, target, readonly=True)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[Db]:
        if self.readonly:
            raise StoreError(f"{self.path}: the ledger is open read-only (a dry run)")
        return self._conn.transaction()

    # -- reads ---------------------------------------------------------------------------

    @property
    def conn(self) -> Db:
        return self._conn

    @property
    def outbox(self) -> Outbox:
        return Outbox(self)

    def offered_ids(self, subscriber: str, *, among: Collection[str] | None = None,
                    since: datetime | None = None, check_outbox: bool = True
                    ) -> frozenset[str]:
        """Papers offered in a delivery (in the email or over its cap), and those held by a
        message not sent yet: neither goes into another email. `among`: only which of these
        papers. `since`: when the ledger first saw the earliest of them (see `first_seen`):
        a paper cannot have been offered before, so only the deliveries sent since (give or
        take OFFER_SKEW) are read, a range of ids. Without it, every delivery kept is read.
        `check_outbox=False` skips the unsent messages, for a subscriber known to have
        none. A run asks for all its subscribers at once (`offers`)."""
        key = subscriber.lower()
        if among is not None and not among:
            return frozenset()
        ids: set[str] = set()
        # The unsent messages first: one stops being unsent in the transaction that records
        # its delivery, so a sender committing between the two reads is seen by one of them
        # (the other order could miss it in both).
        if check_outbox:
            for (held,) in self._conn.hot(_HELD, {"s": key}):
                ids.update(held.split())
        d = deliveries.c
        for included, over_cap in self._conn.execute(
                select(d.included, d.over_cap).where(d.subscriber == key,
                                                     sent_since(self._conn, since))):
            ids.update(papers_offered(included, over_cap))
        if among is not None:
            ids.intersection_update(among)
        return frozenset(ids)

    def offers(self, first_seen: Mapping[str, datetime], now: datetime) -> Offers:
        """`offered_ids` for every subscriber at once, among a run's candidate papers
        (`first_seen`: each with the time the ledger first saw it, `now` for one it never
        saw): the unsent messages, then the deliveries sent since the earliest of the recent
        papers' first sightings, a range of ids read in chunks. A paper first seen longer ago
        (one back in a feed) stretches the read only over the records that name it, which
        the database picks out. There is no index by subscriber (revision 0007): keeping one
        up to date at every delivery and at every prune made a run's cost grow with the
        history kept (issue 11: +15% after a simulated year); this read is as long as the
        feed's window."""
        wanted = {pid: pid for pid in first_seen}  # one string per id, however often offered
        held: dict[str, list[str]] = {}

        def add(subscriber: str, ids: Iterable[str]) -> None:
            hit = [wanted[i] for i in ids if i in wanted]
            if hit:
                held.setdefault(subscriber, []).extend(hit)

        x, d = outbox.c, deliveries.c
        waiting = set()
        # Unsent first, for the reason offered_ids gives.
        for subscriber, offered in self._conn.execute(select(x.subscriber, x.offered).where(
                x.state.in_(_OPEN))):
            waiting.add(subscriber)
            add(subscriber, offered.split())
        recent_from = now - RECENT
        old = sorted(pid for pid, seen in first_seen.items() if seen < recent_from)
        columns = (d.subscriber, d.included, d.over_cap)
        if len(old) < len(first_seen):
            since = min(seen for seen in first_seen.values() if seen >= recent_from)
            for subscriber, included, over_cap in read_sent_since(self._conn, columns, since):
                add(subscriber, papers_offered(included, over_cap))
        if old:
            # Looked for by name; with many (a feed of last month's, read again), every record
            # since is read.
            named = (or_(*(_OFFERED_IDS.contains(f" {pid} ", autoescape=True) for pid in old)),
                     ) if len(old) <= MAX_NAMED else ()
            for subscriber, included, over_cap in read_sent_since(
                    self._conn, columns, min(first_seen[pid] for pid in old), *named):
                add(subscriber, papers_offered(included, over_cap))
        return Offers({s: tuple(set(ids)) for s, ids in held.items()}, frozenset(waiting))

    def first_seen(self, ids: Collection[str]) -> dict[str, datetime]:
        """When the ledger first saw each of these papers (those it has seen)."""
        if not ids:
            return {}
        dialect = self._conn.dialect
        rows = self._conn.hot(_FIRST_SEEN[dialect], {"ids": values_of(dialect, list(ids))})
        return {pid: datetime.fromisoformat(stamp) for pid, stamp in rows}

    # -- suppressions ---------------------------------------------------------------------

    def suppressed(self, subscriber: str) -> str | None:
        """Why this address gets nothing (an unsubscribe, bounces), or None."""
        row = self._conn.hot(_SUPPRESSED, {"s": subscriber.lower()}).fetchone()
        return row[0] if row else None

    def suppressions(self) -> dict[str, tuple[str, str, str]]:
        s = suppressions.c
        rows = self._conn.execute(select(s.subscriber, s.reason, s.since, s.detail)
                                  .order_by(s.since))
        return {sub: (reason, since, detail) for sub, reason, since, detail in rows}

    def suppress(self, subscriber: str, reason: str, now: datetime, detail: str = "") -> bool:
        """Idempotent; True when the address was not suppressed before."""
        with self.transaction() as db:
            stmt = insert_for(db.dialect, suppressions).values(
                subscriber=subscriber.lower(), reason=reason, since=now.isoformat(),
                detail=detail).on_conflict_do_nothing()
            return db.execute(stmt).rowcount == 1

    def unsuppress(self, subscriber: str) -> bool:
        with self.transaction() as db:
            return db.execute(delete(suppressions).where(
                suppressions.c.subscriber == subscriber.lower())).rowcount == 1

    def deliveries(self, subscriber: str | None = None) -> list[DeliveryRecord]:
        d = deliveries.c
        stmt = select(d.subscriber, d.message_id, d.subject, d.sent_at, d.papers, d.run_id)
        if subscriber:
            stmt = stmt.where(d.subscriber == subscriber.lower())
        return [DeliveryRecord(*row) for row in self._conn.execute(stmt.order_by(d.id))]

    def sent_papers(self, message_id: str) -> list[str]:
        ids = self._conn.execute(select(deliveries.c.included).where(
            deliveries.c.message_id == message_id)).scalar()
        return sorted((ids or "").split())

    def last_run_started(self) -> str | None:
        return self._conn.execute(select(func.max(runs.c.started_at))).scalar()  # type: ignore

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        """Runs, oldest first; `limit` keeps the latest ones. A run still marked running whose
        process is gone shows as interrupted."""
        r = runs.c
        stmt = select(r.id, r.started_at, r.finished_at, r.run_date, r.fetched, r.sent,
                      r.failed, r.outcome, r.cause, r.pid, r.host).order_by(r.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        out = []
        for *fields, pid, host in reversed(self._conn.execute(stmt).fetchall()):
            record = RunRecord(*fields)
            if record.outcome == RunState.RUNNING and not _alive(pid, host):
                record = record._replace(outcome=RunState.INTERRUPTED,
                                         cause=record.cause or "its process died")
            out.append(record)
        return out

    def offer_log(self, subscriber: str, since: datetime | None = None
                  ) -> dict[str, tuple[str, bool]]:
        """paper id -> (when its email was sent, whether it was in the email or over the cap),
        from the deliveries kept (those sent since `since`, when given): its first offer."""
        d = deliveries.c
        log: dict[str, tuple[str, bool]] = {}
        for sent_at, included, over_cap in self._conn.execute(
                select(d.sent_at, d.included, d.over_cap)
                .where(d.subscriber == subscriber.lower(), sent_since(self._conn, since))
                .order_by(d.id)):
            for ids, inside in ((included, True), (over_cap, False)):
                for pid in (ids or "").split():
                    log.setdefault(pid, (sent_at, inside))
        return log

    def history(self, *, subscriber: str | None = None, paper: str | None = None,
                since: date | None = None) -> list[HistoryRow]:
        """Every message sent, and every one that was not (failed, cancelled, or still
        waiting) with its reason, in the order they were made."""
        d, x = deliveries.c, outbox.c
        included = d.included
        # Deliveries made before the outbox existed have no outbox row: both are read.
        sent = select(d.id.label("n"), literal(0).label("k"), d.sent_at.label("stamp"),
                      d.subscriber.label("subscriber"), d.message_id.label("message_id"),
                      d.subject.label("subject"), included.label("included"),
                      literal("sent").label("state"), literal("").label("reason"))
        unsent = select(x.id, literal(1), x.updated_at, x.subscriber, x.message_id, x.subject,
                        x.included, x.state, func.coalesce(x.last_error, "")
                        ).where(x.state != "sent")
        both = union_all(sent, unsent).subquery()
        stmt = select(both).order_by(both.c.stamp, both.c.k, both.c.n)
        if subscriber:
            stmt = stmt.where(both.c.subscriber == subscriber.lower())
        if paper:
            stmt = stmt.where((literal_column("' '") + both.c.included + literal_column("' '"))
                              .like(f"% {paper} %"))
        if since:
            stmt = stmt.where(both.c.stamp >= since.isoformat())
        rows = self._conn.execute(stmt).fetchall()
        titles = self.titles({pid for row in rows for pid in (row[6] or "").split()})
        out = []
        for _, _, stamp, sub, mid, subject, inc, state, reason in rows:
            papers_ = tuple(sorted((inc or "").split()))
            out.append(HistoryRow(stamp, sub, mid, subject, papers_,
                                  tuple(titles.get(p, "") for p in papers_),
                                  MessageState(state), reason))
        return out

    def titles(self, ids: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(ids))
        found: dict[str, str] = {}
        for at in range(0, len(wanted), 500):
            found.update((pid, title) for pid, title in self._conn.execute(
                select(papers.c.id, papers.c.title).where(
                    papers.c.id.in_(wanted[at:at + 500]))))
        return found

    def counts(self) -> dict[str, int]:
        def one(what: object) -> int:
            return int(self._conn.execute(what).scalar() or 0)  # type: ignore[arg-type]
        return {
            "deliveries": one(select(func.count()).select_from(deliveries)),
            "papers": one(select(func.count()).select_from(papers)),
            "subscribers_reached": one(select(func.count(deliveries.c.subscriber.distinct()))),
            "runs": one(select(func.count()).select_from(runs)),
        }

    # -- writes --------------------------------------------------------------------------

    def start_run(self, started_at: datetime, run_date: date, origin: str) -> int:
        """A new run. The caller holds the run lock, so a run still marked running died."""
        with self.transaction() as db:
            db.execute(update(runs).where(runs.c.outcome == RunState.RUNNING.value).values(
                outcome=RunState.INTERRUPTED.value,
                cause=func.coalesce(runs.c.cause, "its process died")))
            cur = db.execute(runs.insert().values(
                started_at=started_at.isoformat(), run_date=run_date.isoformat(),
                origin=origin, pid=os.getpid(), host=socket.gethostname()))
            return int(cur.inserted or 0)

    def finish_run(self, run_id: int, finished_at: datetime, *, fetched: int, sent: int,
                   failed: int, outcome: RunState, cause: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(update(runs).where(runs.c.id == run_id).values(
                finished_at=finished_at.isoformat(), fetched=fetched, sent=sent,
                failed=failed, outcome=str(outcome),
                cause=func.coalesce(literal(cause), runs.c.cause)))

    def checkpoint(self) -> None:
        """The log folded into the file and emptied, once the run's senders are done (SQLite:
        the server engines do their own)."""
        if self._conn.dialect == "sqlite":
            self._conn.driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def run_control(self, run_id: int) -> RunControl:
        row = self._conn.hot(_CONTROL, {"r": run_id}).fetchone()
        return RunControl(float(row[0]), int(row[1]), bool(row[2]), row[3])

    def server_trouble(self, run_id: int, cause: str, now: float, delays: Sequence[float],
                       *, fatal: bool = False) -> RunControl:
        """One more sign that the server cannot be used: the run holds off for the next delay,
        or, past the last one (or at once when `fatal`), is blocked with that cause. Senders
        that hit the same trouble together count once."""
        r = runs.c
        with self.transaction() as db:
            hold, trouble, blocked = db.execute(
                select(r.hold_until, r.trouble, r.blocked).where(r.id == run_id)
                .with_for_update()).fetchone()
            if not blocked and (fatal or hold <= now):
                trouble += 1
                blocked = fatal or trouble > len(delays)
                hold = now if blocked else now + delays[trouble - 1]
                db.execute(update(runs).where(r.id == run_id).values(
                    hold_until=hold, trouble=trouble, blocked=int(blocked), cause=cause))
        return RunControl(hold, trouble, bool(blocked), cause)

    def server_fine(self, run_id: int) -> None:
        with self.transaction() as db:
            db.execute(update(runs).where(runs.c.id == run_id, runs.c.blocked == 0)
                       .values(trouble=0, cause=None))

    def recent_titles(self, days: int) -> dict[str, list[Paper]]:
        """The papers of the last `days` feeds the ledger knows, by day, titles only."""
        p = papers.c
        day = func.coalesce(p.listed_on, func.substr(p.first_seen, 1, 10))
        last = select(day.label("d")).distinct().order_by(literal_column("d").desc()) \
            .limit(days).scalar_subquery()
        rows = self.conn.execute(select(p.id, p.title, p.upvotes, day)
                                 .where(day.in_(last))).fetchall()
        out: dict[str, list[Paper]] = {}
        for pid, title, upvotes, d in rows:
            out.setdefault(d, []).append(Paper(id=pid, title=title, upvotes=upvotes))
        return out

    def remember(self, found: Iterable[Paper], seen_at: datetime) -> None:
        stamp = seen_at.isoformat()
        rows = [{"id": p.id, "title": p.title, "upvotes": min(max(p.upvotes, 0), _MAX_INT),
                 "listed_on": p.listed_on.isoformat() if p.listed_on else None,
                 "first_seen": stamp, "last_seen": stamp} for p in found]
        if not rows:
            return
        with self.transaction() as db:
            stmt = insert_for(db.dialect, papers)
            new = stmt.excluded
            db.executemany(stmt.on_conflict_do_update(index_elements=[papers.c.id], set_={
                "title": new.title, "last_seen": new.last_seen,
                "upvotes": case((new.upvotes > papers.c.upvotes, new.upvotes),
                                else_=papers.c.upvotes)}), rows)
