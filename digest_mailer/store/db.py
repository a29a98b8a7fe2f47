"""The bottom of the store: one SQLAlchemy connection per ledger, whose every error is a
StoreError that says what to do, so a damaged, unwritable or unreachable ledger is one
`Error:` line in any command, never a traceback. Rows are read whole at `execute`, since
SQLite reports a damaged page while stepping through a result, not when the statement starts.

Statements are SQLAlchemy Core expressions, built once at import where they are hot (SQLAlchemy
caches each one's compiled SQL per dialect), so both engines run the same queries."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, Executable
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from digest_mailer.errors import StoreError


def damaged_hint(path: str) -> str:
    return (f"check it with `sqlite3 {path} \"PRAGMA integrity_check\"`; copy out what can "
            f"be read with `sqlite3 {path} .recover | sqlite3 recovered.sqlite3` and point "
            "[state] path at the copy, or restore your backup of it (a new, empty ledger "
            "would send every paper again)")


def _sqlite_error(path: str, e: BaseException, doing: str) -> StoreError:
    text = str(e)
    low = text.lower()
    if isinstance(e, sqlite3.DatabaseError) and (
            "malformed" in low or "not a database" in low or "corrupt" in low):
        return StoreError(f"{path}: the ledger is damaged ({text})", hint=damaged_hint(path))
    if "readonly" in low or "read-only" in low or "permission" in low:
        return StoreError(f"{path}: cannot {doing} the ledger ({text})",
                          hint="the ledger and its folder must be writable by the user "
                               "running digest-mailer")
    if "full" in low or "disk i/o" in low:
        return StoreError(f"{path}: cannot {doing} the ledger ({text})",
                          hint="free disk space where [state] path lives; nothing was lost: "
                               "the next run goes on from the last commit")
    if "locked" in low or "busy" in low:
        return StoreError(f"{path}: the ledger stayed locked ({text})",
                          hint="another process held it too long; try again")
    return StoreError(f"{path}: cannot {doing} the ledger ({text})",
                      hint="check [state] path and its folder's permissions")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()


def _postgresql_error(url: str, e: BaseException, doing: str) -> StoreError:
    text = _first_line(e)
    low = str(e).lower()
    state = getattr(e, "sqlstate", None) or ""
    if "password authentication failed" in low or "no password supplied" in low or \
            state == "28P01":
        return StoreError(f"{url}: the PostgreSQL server refused the login ({text})",
                          hint="put the password in $DIGEST_STATE_PASSWORD (or the variable "
                               "[state] password_env names), or in [state] password_file")
    if ("does not exist" in low and "database" in low) or state == "3D000":
        return StoreError(f"{url}: no such database on the PostgreSQL server ({text})",
                          hint="create it (`createdb -h HOST -U USER NAME`) or fix the name in "
                               "[state] url")
    if state.startswith("28") or "authentication" in low or "pg_hba" in low:
        return StoreError(f"{url}: the PostgreSQL server refused the login ({text})",
                          hint="check the user in [state] url and the server's pg_hba.conf")
    if state.startswith("08") or "connection" in low or "could not" in low or \
            "timeout" in low:
        return StoreError(f"{url}: cannot connect to the ledger's PostgreSQL server ({text})",
                          hint="check [state] url's host and port and that the server is "
                               "running; nothing was lost: the next run goes on from the last "
                               "commit")
    if state == "53100" or "disk full" in low or "no space" in low:
        return StoreError(f"{url}: cannot {doing} the ledger ({text})",
                          hint="free disk space on the PostgreSQL server")
    if state == "25006" or "read-only" in low:
        return StoreError(f"{url}: cannot {doing} the ledger ({text})",
                          hint="the PostgreSQL user needs write access (or this is a "
                               "read-only replica)")
    if state in ("40001", "40P01", "55P03"):
        return StoreError(f"{url}: the ledger stayed locked ({text})",
                          hint="another process held it too long; try again")
    return StoreError(f"{url}: cannot {doing} the ledger ({text})",
                      hint="check [state] url and the server's log")


def store_error(label: str, e: BaseException, doing: str = "use") -> StoreError:
    """One StoreError for whatever the driver or SQLAlchemy raised."""
    if isinstance(e, StoreError):
        return e
    orig: BaseException = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    if isinstance(orig, sqlite3.Error) or (isinstance(e, OSError) and "://" not in label):
        return _sqlite_error(label, orig, doing)
    if "://" in label:
        return _postgresql_error(label, orig, doing)
    return _sqlite_error(label, orig, doing)


class Rows:
    """A statement's result, read whole."""

    __slots__ = ("_rows", "inserted", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int, inserted: int | None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.inserted = inserted

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


Params = Mapping[str, Any] | None
# An INSERT's rowcount (INSERT ... ON CONFLICT DO NOTHING: was it new?) is only kept on request.
_KEEP_ROWCOUNT = {"preserve_rowcount": True}
SQLITE_BUSY_MS = 30_000  # how long a SQLite writer waits for another's transaction
# Quick looks for the write lock before SQLite's own wait, whose busy handler sleeps 1 ms, then
# 2, 5, 10...: a sender that met the composer's commit (a fraction of a millisecond) lost a
# millisecond or more each time, a tenth of the sender's time at 10,000 subscribers (py-spy).
_QUICK = (0.0001,) * 20 + (0.0005,) * 10


def _begin_immediate(raw: Any) -> None:
    raw.execute("PRAGMA busy_timeout=0")
    try:
        for pause in _QUICK:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorcode", sqlite3.SQLITE_BUSY) & 0xFF != \
                        sqlite3.SQLITE_BUSY:
                    raise
            time.sleep(pause)
    finally:
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    raw.execute("BEGIN IMMEDIATE")


class _Compiled(NamedTuple):
    sql: str
    order: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None  # positional drivers
    # (sqlite3): the parameters in their order
    defaults: dict[str, Any]  # values bound in the statement itself
    returning: bool
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]  # the types' own conversions


def _getter(names: Sequence[str] | None) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    names = tuple(names or ())
    if len(names) == 1:
        name = names[0]
        return lambda params: (params[name],)
    if not names:
        return lambda params: ()
    return itemgetter(*names)


_SLOW = _Compiled("", None, {}, False, ())


def _driver_error(e: BaseException) -> bool:
    if isinstance(e, sqlite3.Error):
        return True
    module = type(e).__module__
    return module.startswith("psycopg")


class Db:
    """What the tables-and-queries modules see: execute, executemany, transaction.

    One connection for the ledger's life. Outside `transaction()` each statement stands alone
    (SQLite's driver is in autocommit; on PostgreSQL the read's transaction ends at once, so
    no snapshot is held between statements)."""

    def __init__(self, engine: Engine, label: str) -> None:
        self.engine = engine
        self.label = label
        self.dialect = engine.dialect.name
        self._sqlite = self.dialect == "sqlite"
        self._depth = 0
        self._cache: dict[Executable, _Compiled] = {}
        try:
            self.conn: Connection = engine.connect()
        except (SQLAlchemyError, OSError) as e:
            raise store_error(label, e, "open") from e
        self.raw: Any = self.conn.connection.driver_connection

    def execute(self, stmt: Executable, params: Params = None) -> Rows:
        try:
            result = self.conn.execute(stmt, params,
                                       execution_options=_KEEP_ROWCOUNT)
            rows = result.fetchall() if result.returns_rows else []
            inserted = None
            if result.is_insert and not result.context.executemany:
                key = result.inserted_primary_key
                inserted = key[0] if key else None
            out = Rows(list(rows), result.rowcount, inserted)
            if not self._depth and not self._sqlite:
                self.conn.commit()
            return out
        except (SQLAlchemyError, OSError) as e:
            self._abandon()
            raise store_error(self.label, e) from e

    def executemany(self, stmt: Executable, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        try:
            count = self.conn.execute(stmt, list(rows),
                                      execution_options=_KEEP_ROWCOUNT).rowcount
            if not self._depth and not self._sqlite:
                self.conn.commit()
            return count
        except (SQLAlchemyError, OSError) as e:
            self._abandon()
            raise store_error(self.label, e, "write") from e

    # -- the lean path: for the statements run per message -----------------------------------

    def _compiled(self, stmt: Executable, params: Mapping[str, Any]) -> _Compiled | None:
        hit = self._cache.get(stmt)
        if hit is None:
            # An INSERT names the columns its parameters give (every call of a hot statement
            # gives the same ones).
            keys = list(params) if getattr(stmt, "is_insert", False) else None
            c = stmt.compile(dialect=self.engine.dialect,  # type: ignore[attr-defined]
                             column_keys=keys)
            if any(b.expanding for b in c.binds.values()) or \
                    any(n not in params and n not in c.params for n in c.bind_names.values()):
                hit = _SLOW
            else:
                # Values bound in the statement itself; what the caller gives it gives every
                # time (a hot statement's callers always pass the same keys).
                defaults = {k: v for k, v in c.params.items() if k not in params}
                hit = _Compiled(c.string, _getter(c.positiontup) if c.positional else None,
                                defaults, bool(getattr(c, "effective_returning", None)),
                                tuple(c._bind_processors.items()))
            self._cache[stmt] = hit
        return None if hit is _SLOW else hit

    @staticmethod
    def _args(c: _Compiled, params: Mapping[str, Any]) -> Any:
        merged = {**c.defaults, **params} if c.defaults or c.processors else params
        for name, process in c.processors:
            merged[name] = process(merged[name])  # type: ignore[index]
        return merged if c.order is None else c.order(merged)

    def hot(self, stmt: Executable, params: Mapping[str, Any]) -> Rows:
        """`execute` for a statement built once and run per message: its SQL compiled once per
        connection and handed to the driver as is, without SQLAlchemy's execution machinery
        (a third of a sender's store time). Statements it cannot take (bind processors,
        expanding IN lists) go through `execute`."""
        c = self._compiled(stmt, params)
        if c is None:
            return self.execute(stmt, params)
        try:
            cur = self.raw.cursor()
            cur.execute(c.sql, self._args(c, params))
            rows = cur.fetchall() if cur.description is not None else []
            inserted = rows[0][0] if c.returning and rows else getattr(cur, "lastrowid", None)
            out = Rows(rows, cur.rowcount, inserted)
            cur.close()
            if not self._depth and not self._sqlite:
                self.raw.commit()
            return out
        except Exception as e:
            if not _driver_error(e):
                raise
            self._abandon()
            raise store_error(self.label, e) from e

    def hot_many(self, stmt: Executable, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        c = self._compiled(stmt, rows[0])
        if c is None:
            return self.executemany(stmt, rows)
        try:
            cur = self.raw.cursor()
            cur.executemany(c.sql, [self._args(c, r) for r in rows])
            count = int(cur.rowcount)
            cur.close()
            if not self._depth and not self._sqlite:
                self.raw.commit()
            return count
        except Exception as e:
            if not _driver_error(e):
                raise
            self._abandon()
            raise store_error(self.label, e, "write") from e

    def driver_sql(self, sql: str) -> Rows:
        """Engine-specific SQL (a PRAGMA): only where a caller has checked the dialect."""
        try:
            result = self.conn.exec_driver_sql(sql)
            rows = list(result.fetchall()) if result.returns_rows else []
            return Rows(rows, result.rowcount, None)
        except (SQLAlchemyError, OSError) as e:
            self._abandon()
            raise store_error(self.label, e) from e

    @property
    def in_transaction(self) -> bool:
        """Inside `transaction()`: what ends the connection's transaction would end the
        caller's (and release what it holds, such as PostgreSQL's advisory locks)."""
        return self._depth > 0

    def _abandon(self) -> None:
        if not self._depth:
            with suppress(SQLAlchemyError, OSError):
                self.conn.rollback()

    @contextmanager
    def transaction(self) -> Iterator[Db]:
        """One write transaction; on SQLite it takes the write lock at once (BEGIN IMMEDIATE),
        so writers queue at the start, never fail half-way. A nested call joins the outer one.
        BEGIN, COMMIT and ROLLBACK go to the driver directly: SQLAlchemy's statements share its
        connection, and its own bookkeeping cost a tenth of a message's store time."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        try:
            raw = self.raw
            if self._sqlite:
                _begin_immediate(raw)
        except Exception as e:
            if not _driver_error(e) and not isinstance(e, SQLAlchemyError | OSError):
                raise
            self._abandon()
            raise store_error(self.label, e, "write") from e
        self._depth = 1
        try:
            yield self
            self._depth = 0
            raw.commit()
        except BaseException as e:
            self._depth = 0
            with suppress(Exception):
                raw.rollback()
            if isinstance(e, SQLAlchemyError | OSError) or _driver_error(e):
                raise store_error(self.label, e, "write") from e
            raise
        finally:
            self._depth = 0

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.engine.dispose()
