"""Locks that hold across hosts on a PostgreSQL ledger: session-level advisory locks, each on a
connection of its own, so the death of the process (or its host, once the server notices the
connection is gone) releases them; a file beside a SQLite path means nothing on another host.

Who holds one is read from the server (pg_locks and pg_stat_activity): the holder names itself
in its connection's application_name."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from digest_mailer.errors import StoreError
from digest_mailer.lock import Busy, run_lock
from digest_mailer.store.db import store_error
from digest_mailer.store.engines import make_engine
from digest_mailer.store_target import StoreTarget

logger = logging.getLogger(__name__)

# Two fixed keys below 2**31, so pg_locks shows them as classid 0, objid KEY.
RUN_KEY = 0x64_6D_72_31  # "dmr1": one run at a time
LEADER_KEY = 0x64_6D_6C_31  # "dml1": one `serve` composes at each scheduled time
_NAMES = {RUN_KEY: "run lock", LEADER_KEY: "scheduler lead"}
POLL = 0.2  # seconds between tries while waiting


class AdvisoryLock:
    """One advisory lock on its own connection; `release` (or the process's death) ends it."""

    def __init__(self, target: StoreTarget, key: int, what: str) -> None:
        self.target, self.key, self.what = target, key, what
        self._conn: Any = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return True
        engine = make_engine(self.target)
        try:
            conn = engine.connect()
        except Exception as e:
            engine.dispose()
            raise store_error(self.target.label, e, "lock") from e
        try:
            me = (f"digest-mailer {self.what} pid {os.getpid()} on {socket.gethostname()} "
                  f"since {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}")
            conn.execute(text("SELECT set_config('application_name', :n, false)"),
                         {"n": me[:63]})
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": self.key}).scalar())
            conn.commit()  # the lock is the session's: it outlives the transaction
        except Exception as e:
            conn.close()
            engine.dispose()
            raise store_error(self.target.label, e, "lock") from e
        if not got:
            conn.close()
            engine.dispose()
            return False
        self._conn, self._engine = conn, engine
        logger.debug("holding the %s on %s", _NAMES.get(self.key, self.key), self.target.label)
        return True

    def acquire(self, wait: float | None) -> None:
        """Waits up to `wait` seconds (None: as long as it takes; 0: not at all)."""
        end = None if wait is None else time.monotonic() + wait
        while not self.try_acquire():
            if end is not None and time.monotonic() >= end:
                raise Busy(f"another run holds the {_NAMES.get(self.key, 'lock')} on "
                           f"{self.target.label}: {holder(self.target, self.key) or 'unknown'}",
                           hint="wait for it to finish, or pass --wait")
            time.sleep(POLL)

    def alive(self) -> bool:
        """Whether the lock's connection still answers (the server may have dropped it)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:
            self.release()
            return False

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # closing the session releases the lock
            except Exception as e:  # the session is gone either way
                logger.debug("closing the lock's connection: %s", e)
            finally:
                self._engine.dispose()

    def __enter__(self) -> AdvisoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(target: StoreTarget, key: int = RUN_KEY) -> str | None:
    """Who holds the lock (`digest-mailer run pid N on HOST since ...`), or None."""
    engine = make_engine(target, readonly=True)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = 0 AND l.objid = :k AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"k": key}).fetchone()
    except StoreError:
        raise
    except Exception as e:
        raise store_error(target.label, e) from e
    finally:
        engine.dispose()
    return str(row[0]) if row else None


@contextmanager
def held_run_lock(target: StoreTarget, state_path: Path, what: str, *,
                  wait: float | None) -> Iterator[None]:
    """The run lock: a file beside a SQLite ledger; on PostgreSQL an advisory lock, which
    holds across hosts and goes with its holder's connection."""
    if target.kind != "postgresql":
        with run_lock(state_path, f"digest-mailer {what}", wait=wait):
            yield
        return
    with AdvisoryLock(target, RUN_KEY, what) as lock:
        lock.acquire(wait)
        yield
