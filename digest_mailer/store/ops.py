"""Operations on a whole ledger: its size, a backup, a copy into another engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Integer, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from digest_mailer.errors import StoreError
from digest_mailer.store.db import store_error
from digest_mailer.store.ledger import Ledger
from digest_mailer.store.schema import sqlite_backup
from digest_mailer.store.tables import METADATA

logger = logging.getLogger(__name__)
COPY_BATCH = 5000


def size_bytes(ledger: Ledger) -> int | None:
    """What the ledger takes on disk: the SQLite file and its log, or the PostgreSQL
    database; None for a ledger that does not exist yet."""
    path = ledger.target.sqlite_path
    if path is not None:
        files = [path, path.with_name(path.name + "-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) if path.exists() else None
    if ledger.conn.dialect != "postgresql":  # an empty database, read as an empty ledger
        return None
    return int(ledger.conn.execute(text("SELECT pg_database_size(current_database())"))
               .scalar())


def backup(ledger: Ledger, dest: Path) -> int:
    """A consistent copy of a live SQLite ledger at `dest` (runs and senders may go on
    meanwhile); its size. PostgreSQL has pg_dump for this."""
    if ledger.target.sqlite_path is None:
        raise StoreError(f"{ledger.path}: `db backup` copies a SQLite ledger",
                         hint="back a PostgreSQL ledger up with pg_dump: "
                              "pg_dump -Fc -f digest.dump 'postgresql://...'")
    dest = dest.expanduser()
    if dest.exists() and dest.is_dir():
        dest = dest / ledger.target.sqlite_path.name
    if dest.resolve() == ledger.target.sqlite_path.resolve():
        raise StoreError(f"{dest}: that is the ledger itself", hint="give another path")
    if dest.exists():
        raise StoreError(f"{dest}: already exists", hint="give a new file name; a backup "
                                                        "never overwrites a file")
    sqlite_backup(ledger.conn, dest)
    return dest.stat().st_size


def copy(source: Ledger, dest: Ledger, *,
         progress: Callable[[str, int], None] = lambda table, rows: None) -> dict[str, int]:
    """Every row of `source` into the empty ledger `dest` (SQLite into PostgreSQL), table by
    table in dependency order, in one transaction: a copy that fails leaves `dest` empty.
    Ids are kept, so Message-IDs, runs and deliveries stay linked; PostgreSQL's id sequences
    are moved past them."""
    counts: dict[str, int] = {}
    with dest.transaction() as db:
        for table in METADATA.sorted_tables:
            have = db.execute(select(func.count()).select_from(table)).scalar()
            if have:
                raise StoreError(f"{dest.path}: table {table.name} already holds {have} "
                                 "row(s); `db copy` fills an empty ledger only",
                                 hint="copy into a new, empty database")
        for table in METADATA.sorted_tables:
            total = 0
            try:
                result = source.conn.conn.execution_options(yield_per=COPY_BATCH).execute(
                    select(table).order_by(*table.primary_key.columns))
                for part in result.partitions():
                    total += db.executemany(table.insert(), [row._asdict() for row in part])
            except SQLAlchemyError as e:
                raise store_error(source.path, e, "read") from e
            counts[table.name] = total
            progress(table.name, total)
            key = list(table.primary_key.columns)
            if db.dialect == "postgresql" and total and len(key) == 1 and \
                    isinstance(key[0].type, Integer):
                # The ids came along; new rows must be numbered after them.
                db.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', "
                                f"'{key[0].name}'), (SELECT max({key[0].name}) FROM "
                                f"{table.name}))"))
    logger.info("%s -> %s: %s", source.path, dest.path, counts)
    return counts

