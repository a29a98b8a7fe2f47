from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pytest

from conftest import NOW
from digest_mailer.errors import StoreError
from digest_mailer.models import Paper
from digest_mailer.store import SCHEMA_VERSION, Ledger


def test_new_ledger_has_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.sqlite3"
    with Ledger.open(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "papers", "deliveries", "offers"} <= tables


def test_delivery_and_offers_are_recorded_together(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with Ledger.open(path) as ledger:
        run = ledger.start_run(NOW, date(2025, 6, 2), "feed.json")
        ledger.remember([Paper(id="1", title="One", upvotes=3)], NOW)
        ledger.record_delivery(run_id=run, subscriber="Ada@Example.org", message_id="<m1@x>",
                               subject="S", sent_at=NOW, included=["1"], offered=["1", "2"])
    with Ledger.open(path) as ledger:  # survives a reopen: committed at once
        assert ledger.offered_ids("ada@example.org") == {"1", "2"}
        assert ledger.sent_papers("<m1@x>") == ["1"]
        (record,) = ledger.deliveries("ADA@example.org")
        assert (record.subscriber, record.papers, record.run_id) == ("ada@example.org", 1, run)


def test_a_failed_write_records_nothing(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "s.sqlite3") as ledger:
        ledger.record_delivery(run_id=None, subscriber="a@x.org", message_id="<m1@x>",
                               subject="S", sent_at=NOW, included=["1"], offered=["1"])
        with pytest.raises(StoreError):  # the same Message-ID twice violates UNIQUE
            ledger.record_delivery(run_id=None, subscriber="b@x.org", message_id="<m1@x>",
                                   subject="S", sent_at=NOW, included=["2"], offered=["2"])
        assert ledger.offered_ids("b@x.org") == frozenset()


def test_readonly_never_creates_or_writes(tmp_path: Path) -> None:
    path = tmp_path / "missing.sqlite3"
    with Ledger.open_readonly(path) as ledger:
        assert ledger.offered_ids("a@x.org") == frozenset()
        with pytest.raises(StoreError, match="read-only"):
            ledger.start_run(NOW, date(2025, 6, 2), "x")
    assert not path.exists()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this digest-mailer"):
        Ledger.open(path)


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_text("hello, I am not SQLite" * 100)
    with pytest.raises(StoreError, match=r"not a digest-mailer ledger|cannot open"):
        Ledger.open(path)
