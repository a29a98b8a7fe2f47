"""Self-service subscribers: who signed up (pending, then confirmed), subscribers imported or
added to the store, a config subscriber's own preference changes (an override), and the rate
limit counters of the web pages. SQLAlchemy Core 2 only, nothing SQLite-specific in the
queries, so the same code runs on PostgreSQL; the tables live on this module's MetaData so the
store's migrations can take them over as they are."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from digest_mailer.errors import StoreError
from digest_mailer.store.db import store_error
from digest_mailer.store.engines import make_engine
from digest_mailer.store.tables import ss_meta as meta
from digest_mailer.store.tables import ss_rate_limits as rate_limits
from digest_mailer.store.tables import ss_signups as signups
from digest_mailer.store.tables import ss_subscribers as subscribers
from digest_mailer.store_target import StoreTarget

logger = logging.getLogger(__name__)
T = TypeVar("T")

TABLES = (subscribers, signups, rate_limits, meta)
FORGET_AFTER = timedelta(days=30)  # an unconfirmed sign-up's address is kept this long
FILTERS = ("topics", "exclude", "authors", "frequency", "weekday", "paused")


@dataclass(frozen=True, slots=True)
class StoredSubscriber:
    email: str
    kind: str  # 'store' | 'override'
    origin: str
    name: str = ""
    topics: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    min_upvotes: int = 0
    max_papers: int | None = None
    frequency: str = "daily"
    weekday: int = 0
    paused: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def key(self) -> str:
        return self.email.lower()


@dataclass(frozen=True, slots=True)
class Pending:
    email: str
    prefs: dict[str, Any] = field(hash=False)
    nonce: str
    created_at: datetime
    mailed_at: datetime | None
    confirmed_at: datetime | None


def _lines(values: Sequence[str]) -> str:
    return "\n".join(values)


def _split(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split("\n") if t)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timezone-aware values back naive; they were written in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _row(r: Any) -> StoredSubscriber:
    return StoredSubscriber(
        email=r.email, kind=r.kind, origin=r.origin, name=r.name, topics=_split(r.topics),
        exclude=_split(r.exclude), authors=_split(r.authors), min_upvotes=r.min_upvotes,
        max_papers=r.max_papers, frequency=r.frequency, weekday=r.weekday,
        paused=bool(r.paused), created_at=_utc(r.created_at), updated_at=_utc(r.updated_at))


def _values(s: StoredSubscriber, now: datetime) -> dict[str, Any]:
    return {"email_key": s.key, "email": s.email, "kind": s.kind, "origin": s.origin,
            "name": s.name, "topics": _lines(s.topics), "exclude": _lines(s.exclude),
            "authors": _lines(s.authors), "min_upvotes": s.min_upvotes,
            "max_papers": s.max_papers, "frequency": s.frequency, "weekday": s.weekday,
            "paused": s.paused, "created_at": s.created_at or now, "updated_at": now}


def _insert(conn: Connection, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT, in the dialect's own construct: both SQLite and PostgreSQL
    have it, and it is what makes a first write for a key safe when two arrive at once (a
    read then an insert lets both insert, and one fails on the primary key)."""
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise StoreError(f"the subscriber store does not support {name!r} databases",
                     hint="use SQLite (the default) or PostgreSQL")


def engine_for(where: StoreTarget | Path, *, readonly: bool = False) -> Engine:
    """The store's engine for the ledger (store/engines.py), with transactions this module
    can use: the SQLite driver runs in autocommit, so a transaction here is an explicit BEGIN,
    and a write's is BEGIN IMMEDIATE, so a read-then-write never fails on a lock another
    writer took in between. `readonly`: dry runs and read-only commands write nothing (not
    even the header of an empty file)."""
    target = where if isinstance(where, StoreTarget) else StoreTarget.sqlite(where)
    engine = make_engine(target, readonly=readonly)
    if target.kind == "sqlite":
        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("ss_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def exists(target: StoreTarget) -> bool:
    """Whether a read can find anything: a SQLite ledger that is not there yet has nothing
    (and opening it read-only would fail); a PostgreSQL database is asked."""
    path = target.sqlite_path
    return path is None or path.exists()


def peek(where: StoreTarget, read: Callable[[SelfService], T], empty: T) -> T:
    """What `read` finds, through a read-only engine; `empty` when the ledger or these tables
    do not exist yet (nothing is created: dry runs and read-only commands write nothing)."""
    if not exists(where):
        return empty
    engine = engine_for(where, readonly=True)
    try:
        if not sa.inspect(engine).has_table(subscribers.name):
            return empty
        return read(SelfService(engine, where.label))
    except sa.exc.SQLAlchemyError as e:
        raise store_failure(where.label, e) from e
    finally:
        engine.dispose()


def store_failure(label: str, e: BaseException) -> StoreError:
    """The driver's own error, told as the ledger tells it (damaged, read-only, full, busy;
    cannot connect), so a broken ledger reads the same in every command."""
    orig = getattr(e, "orig", None)
    if isinstance(orig, Exception):
        return store_error(label, orig)
    return StoreError(f"{label}: cannot use the subscriber store ({e})",
                      hint="check [state] path or url, permissions and free space")


class SelfService:
    """The store's self-service tables over an Engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, label: str) -> None:
        self.engine = engine
        self.label = label  # the ledger's file or URL, for errors
        self._writer = engine.execution_options(ss_write=True)

    @classmethod
    def at(cls, where: StoreTarget | Path) -> SelfService:
        """Opens the ledger first, which creates or upgrades its tables (these included)."""
        from digest_mailer.store.ledger import Ledger

        with Ledger.open(where):
            pass
        target = where if isinstance(where, StoreTarget) else StoreTarget.sqlite(where)
        return cls(engine_for(target), target.label)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SelfService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as e:
            raise store_failure(self.label, e) from e

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self._writer.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as e:
            raise store_failure(self.label, e) from e

    @staticmethod
    def _bump(conn: Connection) -> None:
        stmt = _insert(conn, meta).values(name="revision", value=1)
        conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.name],
                                                set_={"value": meta.c.value + 1}))

    @staticmethod
    def _upsert(conn: Connection, values: dict[str, Any]) -> None:
        """One subscriber row written whole; an existing row keeps its created_at."""
        stmt = _insert(conn, subscribers).values(**values)
        kept = {"email_key", "created_at"}
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[subscribers.c.email_key],
            set_={k: stmt.excluded[k] for k in values if k not in kept}))

    # -- subscribers ---------------------------------------------------------------------

    def revision(self) -> int:
        with self._read() as conn:
            value = conn.execute(sa.select(meta.c.value).where(meta.c.name == "revision")
                                 ).scalar()
        return int(value or 0)

    def all(self) -> list[StoredSubscriber]:
        with self._read() as conn:
            rows = conn.execute(sa.select(subscribers).order_by(subscribers.c.created_at,
                                                                subscribers.c.email_key))
            return [_row(r) for r in rows]

    def keys(self, since: datetime | None = None) -> tuple[set[str], datetime | None]:
        """The addresses changed since `since` (all of them without it; an hour's margin
        for clocks that step back), and the latest change among them: a watcher reads only
        what moved."""
        c = subscribers.c
        query = sa.select(c.email_key, c.updated_at)
        if since is not None:
            query = query.where(c.updated_at >= since - timedelta(hours=1))
        with self._read() as conn:
            rows = conn.execute(query).all()
        stamps = [t for r in rows if (t := _utc(r.updated_at)) is not None]
        latest = max([*stamps, since] if since is not None else stamps, default=None)
        return {r.email_key for r in rows}, latest

    def get(self, email: str) -> StoredSubscriber | None:
        with self._read() as conn:
            r = conn.execute(sa.select(subscribers).where(
                subscribers.c.email_key == email.lower())).first()
        return _row(r) if r is not None else None

    def state(self, email: str) -> tuple[str, bool] | None:
        """(kind, paused) for the send-time check, or None: one indexed read."""
        with self._read() as conn:
            r = conn.execute(sa.select(subscribers.c.kind, subscribers.c.paused).where(
                subscribers.c.email_key == email.lower())).first()
        return (r.kind, bool(r.paused)) if r is not None else None

    def put(self, s: StoredSubscriber, now: datetime) -> bool:
        """Insert or replace one row (its created_at kept); True when it was new."""
        values = _values(s, now)
        with self._write() as conn:
            old = conn.execute(sa.select(subscribers.c.created_at).where(
                subscribers.c.email_key == s.key)).first()
            self._upsert(conn, values)
            self._bump(conn)
        return old is None

    def remove(self, email: str) -> bool:
        with self._write() as conn:
            gone = conn.execute(sa.delete(subscribers).where(
                subscribers.c.email_key == email.lower())).rowcount
            if gone:
                self._bump(conn)
        return bool(gone)

    def put_many(self, new: Iterable[StoredSubscriber], changed: Iterable[StoredSubscriber],
                 now: datetime) -> None:
        """One transaction for a whole import: all of it or none of it."""
        inserts = [_values(s, now) for s in new]
        updates = [{**_values(s, now), "k": s.key} for s in changed]
        for u in updates:
            u.pop("created_at")
            u.pop("email_key")
        with self._write() as conn:
            if inserts:
                # An address that signed up while the file was read keeps its own row.
                conn.execute(_insert(conn, subscribers).on_conflict_do_nothing(
                    index_elements=[subscribers.c.email_key]), inserts)
            if updates:
                cols: dict[str, Any] = {c: sa.bindparam(c) for c in updates[0] if c != "k"}
                conn.execute(sa.update(subscribers)
                             .where(subscribers.c.email_key == sa.bindparam("k"))
                             .values(**cols), updates)
            if inserts or updates:
                self._bump(conn)

    # -- sign-ups ------------------------------------------------------------------------

    def pending(self, email: str) -> Pending | None:
        with self._read() as conn:
            r = conn.execute(sa.select(signups).where(
                signups.c.email_key == email.lower())).first()
        if r is None:
            return None
        return Pending(r.email, json.loads(r.prefs), r.nonce, _utc(r.created_at) or
                       datetime.now(UTC), _utc(r.mailed_at), _utc(r.confirmed_at))

    def request(self, email: str, prefs: dict[str, Any], nonce: str, now: datetime,
                mail_every: timedelta) -> tuple[str, bool]:
        """Record a sign-up: (the nonce its link carries, whether to mail it now). Not when a
        link was mailed to this address less than `mail_every` ago: the new choices are kept
        and the link already sent confirms them."""
        key = email.lower()
        with self._write() as conn:
            # Sign-ups never confirmed are forgotten after a while: their addresses are
            # someone's who did not ask to be kept.
            conn.execute(sa.delete(signups).where(signups.c.confirmed_at.is_(None),
                                                  signups.c.created_at < now - FORGET_AFTER))
            values = {"email": email, "prefs": json.dumps(prefs), "created_at": now,
                      "confirmed_at": None}
            # The first sign-up for an address inserts; of two at once, one does, and the
            # other, like every later one, finds the row (locked on PostgreSQL until this
            # transaction ends, so two requests never both decide to mail).
            new = conn.execute(_insert(conn, signups).values(
                email_key=key, nonce=nonce, mailed_at=now, **values
            ).on_conflict_do_nothing(index_elements=[signups.c.email_key]
                                     ).returning(signups.c.email_key)).first()
            if new is not None:
                return nonce, True
            old = conn.execute(sa.select(signups.c.mailed_at, signups.c.nonce).where(
                signups.c.email_key == key).with_for_update()).one()
            mailed = _utc(old.mailed_at)
            quiet = mailed is not None and now - mailed < mail_every
            if quiet:
                conn.execute(sa.update(signups).where(signups.c.email_key == key)
                             .values(**values))
            else:
                conn.execute(sa.update(signups).where(signups.c.email_key == key)
                             .values(nonce=nonce, mailed_at=now, **values))
        return (old.nonce, False) if quiet else (nonce, True)

    def unmail(self, email: str) -> None:
        """The confirmation email could not be sent: the next sign-up may mail again."""
        with self._write() as conn:
            conn.execute(sa.update(signups).where(signups.c.email_key == email.lower())
                         .values(mailed_at=None))

    def confirm(self, email: str, nonce: str, now: datetime, *, in_config: bool
                ) -> StoredSubscriber | None:
        """Turn a pending sign-up into a subscriber (or, for an address the config has, into
        its override); None when the link's nonce is not the sign-up's latest, or when it
        was confirmed already (a link works once)."""
        key = email.lower()
        with self._write() as conn:
            r = conn.execute(sa.select(signups).where(signups.c.email_key == key)
                             .with_for_update()).first()
            if r is None or r.nonce != nonce or r.confirmed_at is not None:
                return None  # a link works once: never again after an unsubscribe or removal
            prefs = json.loads(r.prefs)
            conn.execute(sa.update(signups).where(signups.c.email_key == key)
                         .values(confirmed_at=now))
            old = conn.execute(sa.select(subscribers).where(
                subscribers.c.email_key == key)).first()
            sub = StoredSubscriber(
                email=r.email, kind="override" if in_config else "store", origin="signup",
                name=prefs.get("name", ""), topics=tuple(prefs.get("topics", ())),
                exclude=tuple(prefs.get("exclude", ())), authors=tuple(prefs.get("authors", ())),
                frequency=prefs.get("frequency", "daily"), weekday=int(prefs.get("weekday", 0)),
                created_at=_utc(old.created_at) if old is not None else now)
            self._upsert(conn, _values(sub, now))
            self._bump(conn)
        return sub

    def signup_counts(self, now: datetime, confirm_within: timedelta) -> dict[str, int]:
        day, week = now - timedelta(days=1), now - timedelta(days=7)
        c = signups.c
        with self._read() as conn:
            def count(*where: Any) -> int:
                return int(conn.execute(sa.select(sa.func.count()).select_from(signups)
                                        .where(*where)).scalar() or 0)

            return {"pending": count(c.confirmed_at.is_(None),
                                     c.created_at >= now - confirm_within),
                    "requested_last_day": count(c.created_at >= day),
                    "requested_last_week": count(c.created_at >= week),
                    "confirmed_last_day": count(c.confirmed_at >= day),
                    "confirmed_last_week": count(c.confirmed_at >= week)}

    # -- rate limits ---------------------------------------------------------------------

    def hit(self, bucket: str, subject: str, *, limit: int, window: int, now: float) -> bool:
        """Count one request; False when it is over `limit` in the current `window` seconds
        (the refused ones count too, so hammering does not reopen the window)."""
        start = int(now // window * window)
        r = rate_limits.c
        with self._write() as conn:
            # One statement counts: the database adds one to what is there (a count read
            # here and written back would lose the hits of requests racing this one).
            stmt = _insert(conn, rate_limits).values(bucket=bucket, subject=subject,
                                                     window_start=start, hits=1)
            same = rate_limits.c.window_start == start
            hits = int(conn.execute(stmt.on_conflict_do_update(
                index_elements=[r.bucket, r.subject],
                set_={"window_start": start,
                      "hits": sa.case((same, rate_limits.c.hits + 1), else_=1)},
            ).returning(r.hits)).scalar_one())
        if hits == 1:
            # A new subject or a new window: what is left of old windows goes now, so the
            # table holds about one window's visitors. In its own transaction: one that held
            # the counted row while deleting others could deadlock with a request doing the
            # same the other way round (PostgreSQL), and a cleanup that fails costs nothing.
            try:
                with self._write() as conn:
                    conn.execute(sa.delete(rate_limits).where(r.bucket == bucket,
                                                              r.window_start < start))
            except StoreError as e:
                logger.debug("rate limits: old windows left for the next cleanup: %s", e)
        return hits <= limit
