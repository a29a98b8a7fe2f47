"""The bottom of the store: one SQLite connection whose every error is a StoreError that says
what to do, so a damaged or unwritable ledger is one `Error:` line in any command, never a
traceback. Rows are read whole at `execute`, since SQLite reports a damaged page while stepping
through a result, not when the statement starts."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from digest_mailer.errors import StoreError


def damaged_hint(path: str) -> str:
    return (f"check it with `sqlite3 {path} \"PRAGMA integrity_check\"`; copy out what can "
            f"be read with `sqlite3 {path} .recover | sqlite3 recovered.sqlite3` and point "
            "[state] path at the copy, or restore your backup of it (a new, empty ledger "
            "would send every paper again)")


def store_error(path: str, e: BaseException, doing: str = "use") -> StoreError:
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


class Rows:
    """A statement's result, read whole."""

    def __init__(self, rows: list[Any], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class Db:
    """What the tables-and-queries modules see: execute, executemany, executescript."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.raw = conn
        self.path = path

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Rows:
        try:
            cur = self.raw.execute(sql, args)
            return Rows(cur.fetchall(), cur.rowcount, cur.lastrowid)
        except sqlite3.Error as e:
            raise store_error(self.path, e) from e

    def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> int:
        try:
            return self.raw.executemany(sql, args).rowcount
        except sqlite3.Error as e:
            raise store_error(self.path, e, "write") from e

    def executescript(self, script: str) -> None:
        try:
            self.raw.executescript(script)
        except sqlite3.Error as e:
            raise store_error(self.path, e, "write") from e

    def close(self) -> None:
        self.raw.close()
