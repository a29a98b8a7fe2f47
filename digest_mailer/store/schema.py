"""Creating and upgrading the ledger's tables, with Alembic (store/migrations/).

A new ledger is built by running every revision. A SQLite ledger written before Alembic
records its schema in `PRAGMA user_version` (1 to 3): it is copied first (SQLite's online
backup API, beside it), brought to 3 by the legacy script when older, stamped with the
baseline revision (0001, which is schema 3) and upgraded to HEAD, all on first use. Ledgers
under Alembic carry user_version 4, so a digest-mailer from before Alembic refuses them
instead of writing tables it no longer knows.

Adding a revision: `alembic revision` against store/migrations (or copy the newest one), set
its down_revision to HEAD below, then set HEAD to it; test_migrations checks HEAD is the head."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import inspect, text

from digest_mailer.errors import StoreError
from digest_mailer.store.db import Db, damaged_hint, store_error
from digest_mailer.store.engines import StoreTarget
from digest_mailer.store.legacy import COLUMNS, LEGACY_SCRIPT

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "0007"  # the newest revision in store/migrations/versions/
BASELINE = "0001"  # schema 3, the last before Alembic
LEGACY_VERSION = 3
USER_VERSION = 4  # PRAGMA user_version of every SQLite ledger under Alembic
SCHEMA_VERSION = USER_VERSION
# Serialises upgrades of one PostgreSQL database by several hosts (a transaction lock).
_PG_MIGRATION_LOCK = 0x646D_0001


class Schema(NamedTuple):
    """Where a ledger stands: user_version (SQLite; 0 on PostgreSQL), its Alembic revision,
    and whether it has any table yet."""

    user_version: int
    revision: str | None
    has_tables: bool

    @property
    def current(self) -> bool:
        return self.revision == HEAD

    def describe(self) -> str:
        if not self.has_tables:
            return "empty (created by the first run)"
        if self.revision is None:
            return f"schema {self.user_version}, before Alembic (upgraded on first use)"
        return f"revision {self.revision}" + (" (current)" if self.current else
                                              f", upgraded to {HEAD} on first use")


def _migration_config(db: Db) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = db.conn
    return config


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(MIGRATIONS))
    return {s.revision for s in scripts.walk_revisions()}


def inspect_schema(db: Db) -> Schema:
    try:
        # The tables first, the schema number last: outside a transaction these are separate
        # reads, and another process may create or upgrade the ledger between them. Read in
        # this order, that gives at worst an old view of the tables with a new number, which
        # the upgrade rechecks under the write lock; the other order gave a current ledger
        # with an old number, which a first run's 20 concurrent clicks each took for one to
        # back up and upgrade (CI, once: two backups to one name, a disk I/O error).
        tables = set(inspect(db.conn).get_table_names())
        revision = None
        if "alembic_version" in tables:
            revision = db.execute(text("SELECT version_num FROM alembic_version")).scalar()
        version = int(db.driver_sql("PRAGMA user_version").scalar()) if db.dialect == "sqlite" \
            else 0
    except StoreError as e:
        raise StoreError(f"{db.label}: not a digest-mailer ledger, or a damaged one "
                         f"({e.__cause__ or e})", hint=damaged_hint(db.label)) from e
    except Exception as e:  # whatever the inspector met: one StoreError
        raise store_error(db.label, e, "read") from e
    finally:
        # The inspector's reads began a transaction on PostgreSQL: ended here, unless it is
        # the caller's (the upgrade's, whose advisory lock must hold until its commit).
        if db.dialect != "sqlite" and not db.in_transaction:
            db.conn.rollback()
    return Schema(version, revision, bool(tables - {"alembic_version"}))


def _refuse_newer(db: Db, schema: Schema) -> None:
    newer = schema.user_version > USER_VERSION or (
        schema.revision is not None and schema.revision != HEAD and
        schema.revision not in known_revisions())
    if newer:
        what = (f"revision {schema.revision}" if schema.revision
                else f"schema {schema.user_version}")
        raise StoreError(f"{db.label}: ledger {what} is newer than this digest-mailer "
                         f"understands ({HEAD})", hint="upgrade digest-mailer")


def check_readable(db: Db, target: StoreTarget) -> Schema:
    """Refuses a ledger newer than this code; says where it stands."""
    schema = inspect_schema(db)
    _refuse_newer(db, schema)
    return schema


def backup_path(path: Path, schema: Schema, now: datetime) -> Path:
    was = schema.revision or f"schema{schema.user_version}"
    return path.with_name(f"{path.name}.before-{HEAD}-from-{was}-{now:%Y%m%dT%H%M%S}.bak")


def sqlite_backup(db: Db, dest: Path) -> None:
    """A consistent copy of a live SQLite ledger (the online backup API: other processes may
    go on writing meanwhile), written to a temporary name and renamed when complete."""
    raw = db.raw
    assert isinstance(raw, sqlite3.Connection)
    # Its own partial file: two processes upgrading at once would write one file together.
    partial = dest.with_name(f"{dest.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        partial.unlink(missing_ok=True)
        with sqlite3.connect(partial) as copy:
            raw.backup(copy, pages=4096)
        copy.close()
        partial.replace(dest)
    except (sqlite3.Error, OSError) as e:
        partial.unlink(missing_ok=True)
        raise store_error(str(dest), e, "write a backup of").__class__(
            f"{dest}: cannot write the ledger's backup ({e})",
            hint="free space or permissions where the ledger lives; nothing was changed") from e


def prepare(db: Db, target: StoreTarget, *, now: datetime | None = None) -> Schema:
    """The ledger's tables made current: created when missing, older ones upgraded (SQLite:
    after a backup beside the file). Returns where it stood before."""
    schema = check_readable(db, target)
    if schema.current and (db.dialect != "sqlite" or schema.user_version == USER_VERSION):
        return schema
    path = target.sqlite_path
    if path is not None and schema.has_tables:
        dest = backup_path(path, schema, now or datetime.now(UTC))
        sqlite_backup(db, dest)
        logger.warning("%s: ledger %s upgraded to revision %s; the ledger as it was is in %s",
                       db.label, schema.describe().split(",")[0], HEAD, dest)
    elif schema.has_tables:
        logger.warning("%s: ledger upgraded from revision %s to %s (take a pg_dump before "
                       "upgrading digest-mailer to keep the old one)", db.label,
                       schema.revision, HEAD)
    upgrade(db)
    return schema


def upgrade(db: Db) -> None:
    """Every revision the ledger lacks, in one transaction that rechecks where the ledger
    stands once it holds the write lock (another process may have upgraded it meanwhile)."""
    from alembic import command

    with db.transaction():
        if db.dialect == "postgresql":
            db.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
        schema = inspect_schema(db)
        _refuse_newer(db, schema)
        if db.dialect == "sqlite" and schema.has_tables and schema.revision is None:
            if schema.user_version < LEGACY_VERSION:
                _legacy_upgrade(db)
            command.stamp(_migration_config(db), BASELINE)  # type: ignore[arg-type]
        if schema.revision != HEAD:
            command.upgrade(_migration_config(db), "head")  # type: ignore[arg-type]
        if db.dialect == "sqlite":
            db.driver_sql(f"PRAGMA user_version={USER_VERSION}")
    logger.info("%s: ledger at revision %s", db.label, HEAD)


def _legacy_upgrade(db: Db) -> None:
    """Schema 1 or 2 to 3, on SQLite, inside the caller's transaction: columns first (the
    script's indexes may name them)."""
    raw = db.raw
    for table, column, definition in COLUMNS:
        have = {r[1] for r in raw.execute(f"PRAGMA table_info({table})")}
        if have and column not in have:
            raw.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    # Inside a transaction, so not executescript (which commits first): one statement at a
    # time, comments (which hold semicolons) dropped.
    script = "\n".join(line for line in LEGACY_SCRIPT.splitlines()
                       if not line.lstrip().startswith("--"))
    for statement in script.split(";"):
        if statement.strip():
            raw.execute(statement)
