"""The engine for a ledger: a registry of engine kinds (SQLite, the embedded default;
PostgreSQL for a ledger shared by several hosts), each making a SQLAlchemy Engine from a
StoreTarget. A PostgreSQL password is read where the connection is made (environment variable
or file), never from the config and never carried in the target."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from digest_mailer.errors import DigestMailerError, StoreError
from digest_mailer.store.db import SQLITE_BUSY_MS
from digest_mailer.store_target import StoreTarget

__all__ = ["ENGINES", "StoreTarget", "make_engine"]


def _sqlite_engine(target: StoreTarget, readonly: bool) -> Engine:
    path = Path(target.path or ":memory:")

    def connect() -> sqlite3.Connection:
        if target.path is None:
            return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        if readonly:
            return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None, check_same_thread=False)
        conn = sqlite3.connect(path, isolation_level=None, timeout=SQLITE_BUSY_MS / 1000,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL: every commit survives the process dying (SIGKILL included); only
        # an OS crash or power loss can take back the last commits. FULL would fsync three
        # times per message.
        conn.execute("PRAGMA synchronous=NORMAL")
        # A checkpoint (copying the log into the file, two fsyncs) every 1,000 pages, the
        # default, came every 150 messages and cost 70% of a send's commits; the run
        # checkpoints once at its end instead (Ledger.checkpoint). Safety is the same: a
        # commit is in the log, whose size this bounds (32 MB).
        conn.execute("PRAGMA wal_autocheckpoint=8000")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    # The driver stays in autocommit (isolation_level=None): reads take no lock, and a write
    # transaction is an explicit BEGIN IMMEDIATE (Db.transaction), so two writers queue at
    # BEGIN instead of failing at their first write.
    return create_engine("sqlite+pysqlite://", creator=connect, poolclass=NullPool)


def _password(target: StoreTarget) -> str | None:
    """As for SMTP: the file when one is set (owner-only), else the environment; None lets
    libpq use trust, peer or ~/.pgpass."""
    if target.password_file:
        from digest_mailer.credentials import read_private_file

        try:
            data = read_private_file(Path(target.password_file), "PostgreSQL password",
                                     "state.password_file")
        except DigestMailerError as e:
            raise StoreError(e.message, hint=e.hint) from e
        value = data.decode("utf-8", "replace").strip("\r\n")
        if not value:
            raise StoreError(f"{target.password_file} (state.password_file): the file is empty",
                             hint="write the PostgreSQL password into it")
        return value
    return os.environ.get(target.password_env) or None


def _postgresql_engine(target: StoreTarget, readonly: bool) -> Engine:
    try:
        import psycopg  # noqa: F401 (SQLAlchemy imports it later; say what is missing now)
    except ImportError as e:
        raise StoreError(f"{target.label}: a PostgreSQL ledger needs the psycopg driver, "
                         "which is not installed",
                         hint="pip install 'digest-mailer[postgresql]'") from e
    url: URL = make_url(str(target.url)).set(drivername="postgresql+psycopg",
                                            password=_password(target))
    engine = create_engine(url, poolclass=NullPool,
                           # A returned connection is closed at once (NullPool), which ends
                           # its transaction on the server; a rollback first would only add a
                           # round trip, and a traceback in the log when the server is gone.
                           pool_reset_on_return=None,
                           # Every wait has a deadline: 10 s to connect, and 30 s for a
                           # lock, as SQLite's busy timeout (a lock wait past it is the
                           # "stayed locked" error).
                           connect_args={"connect_timeout": 10,
                                         "application_name": "digest-mailer",
                                         "options": "-c lock_timeout=30000"})
    if readonly:
        @event.listens_for(engine, "connect")
        def _readonly(dbapi_conn: object, _record: object) -> None:
            dbapi_conn.read_only = True  # type: ignore[attr-defined]
    return engine


ENGINES: dict[str, Callable[[StoreTarget, bool], Engine]] = {
    "sqlite": _sqlite_engine,
    "postgresql": _postgresql_engine,
}


def make_engine(target: StoreTarget, *, readonly: bool = False) -> Engine:
    return ENGINES[target.kind](target, readonly)
