from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pytest

from conftest import NOW
from digest_mailer.errors import StoreError
from digest_mailer.models import OutgoingMessage, Paper
from digest_mailer.store import SCHEMA_VERSION, Ledger


def message(to: str, message_id: str, **kw: object) -> OutgoingMessage:
    return OutgoingMessage(recipient=to, envelope_from="p@x.org", message_id=message_id,
                           subject="S", data=b"", html="", run_date=date(2025, 6, 2),
                           **kw)  # type: ignore[arg-type]


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
        entry = ledger.outbox.add(message("Ada@Example.org", "<m1@x>"), run_id=run,
                                  included=["1"], offered=["1", "2"], now=NOW)
        (claimed,) = ledger.outbox.claim(run, "s1", 8, NOW.timestamp(), 60)
        assert claimed.id == entry and claimed.state == "pending"
        ledger.outbox.sent(entry, NOW, run)
    with Ledger.open(path) as ledger:  # survives a reopen: committed at once
        assert ledger.offered_ids("ada@example.org") == {"1", "2"}
        assert ledger.sent_papers("<m1@x>") == ["1"]
        (record,) = ledger.deliveries("ADA@example.org")
        assert (record.subscriber, record.papers, record.run_id) == ("ada@example.org", 1, run)


def test_a_failed_write_records_nothing(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "s.sqlite3") as ledger:
        def add(who: str, paper: str) -> int:
            return ledger.outbox.add(message(who, "<m1@x>"), run_id=None, included=[paper],
                                     offered=[paper], now=NOW)

        add("a@x.org", "1")
        with pytest.raises(StoreError):  # the same Message-ID twice violates UNIQUE
            add("b@x.org", "2")
        assert ledger.offered_ids("b@x.org") == frozenset()
        assert ledger.offered_ids("a@x.org") == {"1"}  # held by its unsent message


def test_outbox_states_and_what_counts_as_offered(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "s.sqlite3") as ledger:
        box = ledger.outbox
        set_id = box.add_set(b"template bytes", NOW)
        assert box.load_set(set_id) == b"template bytes"
        first = box.add(message("A@x.org", "<1@x>", set_id=set_id, name="Ada"), run_id=None,
                        included=["1"], offered=["1", "2"], now=NOW)
        run = ledger.start_run(NOW, date(2025, 6, 2), "x")
        (adopted,) = box.adopt(run)
        assert adopted.id == first
        (claimed,) = box.claim(run, "s1", 8, NOW.timestamp(), 60)
        assert claimed.id == first
        assert box.claim(run, "s2", 8, NOW.timestamp(), 60) == []  # nobody else gets it
        (entry,) = box.open_entries()
        assert (entry.recipient, entry.state, entry.attempts, entry.set_id, entry.name) == \
            ("A@x.org", "sending", 0, set_id, "Ada")
        box.deferred(first, NOW, "451 try later")
        assert box.open_entries()[0].attempts == 1
        assert ledger.offered_ids("a@x.org") == {"1", "2"}
        box.sent(first, NOW, None)
        assert box.open_entries() == [] and ledger.sent_papers("<1@x>") == ["1"]
        for n in range(2):
            failed = box.add(message("A@x.org", f"<f{n}@x>"), run_id=None, included=["3"],
                             offered=["3"], now=NOW)
            box.failed(failed, NOW, "550 no such user")
        assert box.hard_failures("a@x.org") == 2
        assert ledger.offered_ids("a@x.org") == {"1", "2"}  # failed messages hold nothing
        assert box.counts() == {"sent": 1, "failed": 2}
        box.prune_sets()
        assert box.load_set(set_id) is None  # no unsent message needs it


def test_suppressions_are_idempotent(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "s.sqlite3") as ledger:
        assert ledger.suppress("A@x.org", "unsubscribed", NOW)
        assert not ledger.suppress("a@x.org", "unsubscribed", NOW)
        assert ledger.suppressed("a@X.org") == "unsubscribed"
        assert ledger.unsuppress("a@x.org") and ledger.suppressed("a@x.org") is None


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
    with pytest.raises(StoreError, match=r"damaged") as info:
        Ledger.open(path)
    assert "PRAGMA integrity_check" in (info.value.hint or "")
    assert "new file" not in (info.value.hint or "")
