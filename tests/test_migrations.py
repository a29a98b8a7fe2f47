"""Ledgers written before Alembic upgrade in place on first use, after a backup; newer ones are
refused; dry runs read an old ledger without touching it."""

from __future__ import annotations

import re
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURES, NOW
from digest_mailer.errors import StoreError
from digest_mailer.models import OutgoingMessage, Paper
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.legacy import COLUMNS
from digest_mailer.store.schema import HEAD, MIGRATIONS, USER_VERSION, known_revisions

SCHEMA_3 = (FIXTURES / "ledger-schema-3.sql").read_text()


def old_ledger(path: Path, version: int = 3) -> None:
    """A ledger as main at bed4554 wrote it (its schema and its statements), with a sent
    email, an unsent one, a failed one and an unsubscribe. Versions 1 and 2 lack the columns
    that came later."""
    script = SCHEMA_3
    if version < 3:
        for _table, column, _ in COLUMNS:
            script = re.sub(rf"\n\s*{column}\s+[^\n]*?,?(?=\n)", "", script)
        script = re.sub(r",\n\)", "\n)", script)
        script = re.sub(r"CREATE INDEX IF NOT EXISTS outbox_claim[^;]*;", "", script)
    if version < 2:
        script = script.split("-- Schema 2")[0]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(script + f"\nPRAGMA user_version={version};")
    stamp = NOW.isoformat()
    conn.execute("INSERT INTO runs (started_at, run_date, origin) VALUES (?, ?, ?)",
                 (stamp, "2025-06-02", "feed.json"))
    for pid, title in [("2506.00001", "Diffusion at scale"), ("2506.00002", "Speech"),
                       ("2506.00003", "Over the cap")]:
        conn.execute("INSERT INTO papers (id, title, upvotes, listed_on, first_seen, last_seen) "
                     "VALUES (?, ?, 5, '2025-06-02', ?, ?)", (pid, title, stamp, stamp))
    conn.execute("INSERT INTO deliveries (run_id, subscriber, message_id, subject, sent_at, "
                 "papers) VALUES (1, 'ada@example.org', '<sent@x>', 'Two papers', ?, 2)",
                 (stamp,))
    conn.executemany("INSERT INTO offers (subscriber, paper_id, delivery_id, included) VALUES "
                     "('ada@example.org', ?, 1, ?)",
                     [("2506.00001", 1), ("2506.00002", 1), ("2506.00003", 0)])
    if version >= 2:
        conn.execute("INSERT INTO suppressions (subscriber, reason, since) VALUES "
                     "('eve@example.org', 'unsubscribed', ?)", (stamp,))
        conn.execute("INSERT INTO outbox_sets (created_at, template) VALUES (?, x'00')",
                     (stamp,))
        for n, (who, state) in enumerate([("ada@example.org", "sent"),
                                          ("bob@example.org", "pending"),
                                          ("cy@example.org", "failed")]):
            conn.execute(
                "INSERT INTO outbox (run_id, set_id, subscriber, recipient, name, "
                "unsubscribe_url, token, message_id, subject, envelope_from, included, "
                "offered, state, created_at, updated_at) VALUES (1, 1, ?, ?, '', 'u', 't', ?, "
                "'S', 'p@x.org', '2506.00002', '2506.00002', ?, ?, ?)",
                (who, who, "<sent@x>" if n == 0 else f"<m{n}@x>", state, stamp, stamp))
    conn.close()


def version_of(path: Path) -> tuple[int, str | None]:
    conn = sqlite3.connect(path)
    try:
        uv = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        rev = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] \
            if "alembic_version" in tables else None
        return uv, rev
    finally:
        conn.close()


def test_head_is_the_newest_revision() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(str(MIGRATIONS)).get_current_head() == HEAD
    assert HEAD in known_revisions()


def test_a_ledger_written_by_main_upgrades_in_place_after_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    old_ledger(path)
    before = path.read_bytes()
    with Ledger.open(path) as ledger:
        # Everything main recorded reads as before.
        (row,) = [r for r in ledger.history() if r.state == "sent"]
        assert (row.subscriber, row.message_id, row.papers, row.titles) == (
            "ada@example.org", "<sent@x>", ("2506.00001", "2506.00002"),
            ("Diffusion at scale", "Speech"))
        assert ledger.offered_ids("ada@example.org") == {"2506.00001", "2506.00002",
                                                         "2506.00003"}
        assert ledger.suppressed("eve@example.org") == "unsubscribed"
        assert ledger.sent_papers("<sent@x>") == ["2506.00001", "2506.00002"]
        assert ledger.outbox.failed_in_a_row("cy@example.org", 1)
        assert not ledger.outbox.failed_in_a_row("cy@example.org", 2)
        # The unsent message is still in the queue, under its Message-ID.
        run = ledger.start_run(NOW, date(2025, 6, 3), "x")
        (adopted,) = ledger.outbox.adopt(run)
        assert adopted.message_id == "<m1@x>"
    assert version_of(path) == (USER_VERSION, HEAD)
    (backup,) = tmp_path.glob("state.sqlite3.before-*.bak")
    assert backup.name.startswith(f"state.sqlite3.before-{HEAD}-from-schema3-")
    assert version_of(backup) == (3, None)
    conn = sqlite3.connect(backup)
    assert conn.execute("SELECT count(*) FROM offers").fetchone()[0] == 3
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert len(before) > 0
    # Opening again changes nothing and takes no second backup.
    with Ledger.open(path):
        pass
    assert len(list(tmp_path.glob("state.sqlite3.before-*"))) == 1


@pytest.mark.parametrize("version", [1, 2])
def test_ledgers_of_schema_1_and_2_still_open(tmp_path: Path, version: int) -> None:
    path = tmp_path / "state.sqlite3"
    old_ledger(path, version)
    with Ledger.open(path) as ledger:
        assert ledger.offered_ids("ada@example.org") == {"2506.00001", "2506.00002",
                                                         "2506.00003"}
        assert [r.papers for r in ledger.history() if r.state == "sent"] == [
            ("2506.00001", "2506.00002")]
        run = ledger.start_run(NOW, date(2025, 6, 3), "x")
        assert ledger.run_control(run).trouble == 0  # a column schema 3 added
    assert version_of(path) == (USER_VERSION, HEAD)


def test_a_dry_run_reads_an_old_ledger_without_touching_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    old_ledger(path)
    before = path.read_bytes()
    with Ledger.open_readonly(path) as ledger:
        assert ledger.offered_ids("ada@example.org") == {"2506.00001", "2506.00002",
                                                         "2506.00003"}
        assert next(r.message_id for r in ledger.history()) == "<sent@x>"
    assert path.read_bytes() == before and list(tmp_path.glob("*.bak")) == []


def test_a_revision_this_code_does_not_know_is_refused(store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger, ledger.transaction() as db:
        from sqlalchemy import text
        db.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="revision 9999 is newer than this digest-mailer"):
        Ledger.open(store_target)
    with pytest.raises(StoreError, match="newer"):
        Ledger.open_readonly(store_target)


def test_a_new_ledger_is_at_head_on_either_engine(store_target: StoreTarget) -> None:
    from digest_mailer.store.db import Db
    from digest_mailer.store.engines import make_engine
    from digest_mailer.store.schema import inspect_schema

    with Ledger.open(store_target):
        pass
    db = Db(make_engine(store_target), store_target.label)
    try:
        found = inspect_schema(db)
        assert found.current and found.has_tables
        assert found.user_version == (USER_VERSION if store_target.kind == "sqlite" else 0)
    finally:
        db.close()


def test_offers_of_a_0003_ledger_are_numbered_in_the_order_they_were_recorded(
        store_target: StoreTarget) -> None:
    """Revision 0005 on either engine: the offers of a ledger at 0003 (a primary key on
    subscriber and paper, so stored in that order) get ids in the order of their deliveries;
    then 0006 puts them in the deliveries."""
    from alembic import command
    from sqlalchemy import text

    from digest_mailer.store.db import Db
    from digest_mailer.store.engines import make_engine
    from digest_mailer.store.schema import _migration_config, inspect_schema
    db = Db(make_engine(store_target), store_target.label)
    try:
        with db.transaction():
            command.upgrade(_migration_config(db), "0003")  # type: ignore[arg-type]
        with db.transaction():
            db.execute(text("INSERT INTO runs (started_at, run_date, origin) "
                            "VALUES ('2025-06-01', '2025-06-01', 'x')"))
            # Zed was mailed first, ada last: the old key order is the reverse.
            for n, who in enumerate(["zed@x.org", "mia@x.org", "ada@x.org"], start=1):
                db.execute(text(
                    "INSERT INTO deliveries (id, run_id, subscriber, message_id, subject, "
                    "sent_at, papers) VALUES (:n, 1, :who, :mid, 'S', :at, 2)"),
                    {"n": n, "who": who, "mid": f"<{n}@x>", "at": f"2025-06-0{n}"})
                for pid in ("2506.00002", "2506.00001"):
                    db.execute(text("INSERT INTO offers (subscriber, paper_id, delivery_id, "
                                    "included) VALUES (:who, :pid, :n, 1)"),
                               {"who": who, "pid": pid, "n": n})
        assert inspect_schema(db).revision == "0003"
    finally:
        db.close()
    db = Db(make_engine(store_target), store_target.label)
    try:
        with db.transaction():
            command.upgrade(_migration_config(db), "0005")  # type: ignore[arg-type]
        rows = db.execute(text("SELECT id, subscriber, paper_id FROM offers ORDER BY id")
                          ).fetchall()
    finally:
        db.close()
    assert [tuple(r) for r in rows] == [
        (1, "zed@x.org", "2506.00001"), (2, "zed@x.org", "2506.00002"),
        (3, "mia@x.org", "2506.00001"), (4, "mia@x.org", "2506.00002"),
        (5, "ada@x.org", "2506.00001"), (6, "ada@x.org", "2506.00002")]
    # Revision 0006 moves them into their deliveries (whose `included` this test left
    # empty, as no code since 0002 would): what was offered reads the same.
    with Ledger.open(store_target) as ledger:
        assert ledger.offered_ids("mia@x.org") == {"2506.00001", "2506.00002"}
        assert ledger.offered_ids("mia@x.org", among=["2506.00002", "2506.00009"]) == {
            "2506.00002"}
        assert ledger.sent_papers("<2@x>") == ["2506.00001", "2506.00002"]
    if store_target.kind == "sqlite":
        assert version_of(store_target.sqlite_path) == (USER_VERSION, HEAD)  # type: ignore


def test_revisions_0006_and_0005_go_back_to_0004_with_every_offer(
        store_target: StoreTarget) -> None:
    from alembic import command
    from sqlalchemy import text

    from digest_mailer.store.schema import _migration_config, inspect_schema

    with Ledger.open(store_target) as ledger:
        ledger.remember([Paper(id="2506.00001", title="T", upvotes=1)], NOW)
        entry = ledger.outbox.add(
            OutgoingMessage(recipient="ada@x.org", envelope_from="p@x.org", message_id="<a@x>",
                            subject="S", data=b"", html="", run_date=NOW.date()),
            run_id=None, included=["2506.00001"], offered=["2506.00001", "2506.00002"],
            now=NOW)
        ledger.outbox.sent(entry, NOW, None)
        db = ledger.conn
        with db.transaction():
            command.downgrade(_migration_config(db), "0004")  # type: ignore[arg-type]
        assert inspect_schema(db).revision == "0004"
        assert db.execute(text("SELECT subscriber, paper_id, included FROM offers "
                               "ORDER BY paper_id")).fetchall() == [
            ("ada@x.org", "2506.00001", 1), ("ada@x.org", "2506.00002", 0)]
        with db.transaction():
            command.upgrade(_migration_config(db), "head")  # type: ignore[arg-type]
        assert ledger.offered_ids("ada@x.org") == {"2506.00001", "2506.00002"}
        assert ledger.offer_log("ada@x.org") == {"2506.00001": (NOW.isoformat(), True),
                                                 "2506.00002": (NOW.isoformat(), False)}


def test_the_migration_lock_holds_through_the_look_at_the_schema(pg_server: str) -> None:
    """CI-like run, `serve` on a fresh PostgreSQL database: its run and its own sender opened
    the ledger at once, and both ran the migrations together (the look at the schema inside
    the upgrade ended the transaction that held the lock). Alembic's module-level state then
    broke one of them with a traceback, and the `serve` died."""
    from sqlalchemy import text

    from conftest import fresh_pg_database
    from digest_mailer.store.db import Db
    from digest_mailer.store.engines import make_engine
    from digest_mailer.store.schema import _PG_MIGRATION_LOCK, inspect_schema

    with fresh_pg_database(pg_server) as url:
        target = StoreTarget.parse(url)
        db, other = (Db(make_engine(target), target.label) for _ in range(2))
        try:
            with db.transaction():
                db.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
                inspect_schema(db)
                taken = other.execute(text(
                    f"SELECT pg_try_advisory_lock({_PG_MIGRATION_LOCK})")).scalar()
                assert taken is False  # still this transaction's
        finally:
            db.close()
            other.close()
        # And for real: eight threads open the new ledger at once.
        import threading

        errors: list[BaseException] = []

        def open_it() -> None:
            try:
                with Ledger.open(target):
                    pass
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and not any(t.is_alive() for t in threads)


def test_a_ledger_created_by_another_while_this_one_looks_is_not_backed_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI, once: a first run's 20 concurrent unsubscribe clicks each opened the new ledger;
    one read the schema number before another's creation committed and the tables after it,
    took the ledger for an old one to back up and upgrade, and failed writing the backup
    beside another's. The reads are ordered so that a creation between them looks new."""
    from digest_mailer.store.db import Db

    path = tmp_path / "state.sqlite3"
    read = Db.driver_sql
    created: list[bool] = []

    def then_another_creates_it(self: Db, sql: str) -> Any:
        rows = read(self, sql)
        if sql == "PRAGMA user_version" and not created:
            created.append(True)
            Ledger.open(path).close()  # another process, between this one's reads
        return rows

    monkeypatch.setattr(Db, "driver_sql", then_another_creates_it)
    with Ledger.open(path) as ledger:
        ledger.start_run(NOW, date(2025, 6, 2), "x")
    assert created == [True]
    assert sorted(p.name for p in tmp_path.iterdir() if ".bak" in p.name) == []
