from __future__ import annotations

import sqlite3
from datetime import date, datetime
from pathlib import Path

import pytest

from conftest import NOW
from digest_mailer.errors import StoreError
from digest_mailer.models import MessageState, OutgoingMessage, Paper
from digest_mailer.store import SCHEMA_VERSION, Ledger, StoreTarget


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
    assert {"runs", "papers", "deliveries", "outbox"} <= tables
    assert "offers" not in tables  # in the deliveries since revision 0006


def test_a_delivery_and_what_it_offered_are_recorded_together(store_target: StoreTarget) -> None:
    path = store_target
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


def test_a_sent_message_stays_sent_whatever_a_late_sender_reports(
        store_target: StoreTarget) -> None:
    """Review finding: a sender whose lease ran out could turn a row another sender had sent
    into deferred (sent again) or failed (counted towards suppression)."""
    with Ledger.open(store_target) as ledger:
        run = ledger.start_run(NOW, date(2025, 6, 2), "feed.json")
        entry = ledger.outbox.add(message("ada@x.org", "<m1@x>"), run_id=run, included=["1"],
                                  offered=["1"], now=NOW)
        ledger.outbox.claim(run, "late", 8, NOW.timestamp(), 60)
        ledger.outbox.sent(entry, NOW, run)  # the sender that took over after the lease
        ledger.outbox.deferred(entry, NOW, "451 try later", next_try=NOW.timestamp())
        ledger.outbox.failed(entry, NOW, "550 no such user")
        ledger.outbox.cancelled(entry, NOW, "no longer a subscriber")
        assert ledger.outbox.counts() == {"sent": 1}
        assert not ledger.outbox.failed_in_a_row("ada@x.org", 1)
        assert ledger.outbox.claim(run, "s2", 8, NOW.timestamp() + 120, 60) == []


@pytest.mark.parametrize("chunk", [20_000, 2])
def test_a_runs_offers_for_everyone_at_once(store_target: StoreTarget, chunk: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`Ledger.offers` reads what was offered to every subscriber in one go (the unsent
    messages, then the deliveries since the recent papers were first seen, in chunks of ids,
    and for a paper first seen long ago the records that name it): among the run's
    candidates only, as `offered_ids` says for each, and who waits in the outbox."""
    from datetime import timedelta

    from digest_mailer.store import ranges

    monkeypatch.setattr(ranges, "CHUNK", chunk)
    with Ledger.open(store_target) as ledger:
        box = ledger.outbox
        run = ledger.start_run(NOW, date(2025, 6, 2), "feed.json")

        def deliver(to: str, mid: str, included: list[str], offered: list[str],
                    days: int) -> None:
            when = NOW + timedelta(days=days)
            entry = box.add(message(to, mid), run_id=run, included=included, offered=offered,
                            now=when)
            box.sent(entry, when, run)

        deliver("Ada@x.org", "<old@x>", ["9"], ["9", "8"], -30)  # an old paper's offer
        deliver("eve@x.org", "<e1@x>", ["99", "2x1"], ["99", "2x1", "80"], -29)
        deliver("ada@x.org", "<a1@x>", ["1"], ["1", "2"], -3)
        deliver("bob@x.org", "<b1@x>", ["2", "7", "10"], ["2", "7", "10"], -2)
        deliver("bob@x.org", "<b2@x>", ["3"], ["3"], 0)
        box.add(message("cy@x.org", "<c1@x>"), run_id=run, included=["4"], offered=["4", "5"],
                now=NOW)  # unsent: holds its papers
        failed = box.add(message("dan@x.org", "<d1@x>"), run_id=run, included=["6"],
                         offered=["6"], now=NOW)
        box.failed(failed, NOW, "550 no such user")  # holds nothing
        recent = {pid: NOW - timedelta(days=4) for pid in ("1", "2", "3", "4", "5", "6")}
        # "9" and "2_1" were first seen a month ago and are back in the feed: only records
        # that name them are read that far back ("99", "2x1" and "80" are not them).
        old = {"9": NOW - timedelta(days=31), "2_1": NOW - timedelta(days=31)}
        offers = ledger.offers(recent | old, NOW)
        assert offers.waiting == {"cy@x.org"}
        assert {s: set(ids) for s, ids in offers.held.items()} == {
            "ada@x.org": {"1", "2", "9"}, "bob@x.org": {"2", "3"}, "cy@x.org": {"4", "5"}}
        assert offers.of("ADA@x.org", ["2", "8"]) == {"2"}
        assert offers.of("eve@x.org", [*recent, *old]) == frozenset()
        candidates = [*recent, *old]
        for who in ("ada@x.org", "bob@x.org", "cy@x.org", "dan@x.org", "eve@x.org"):
            assert offers.of(who, candidates) == ledger.offered_ids(
                who, among=candidates, since=NOW - timedelta(days=31))
        # Many old papers: every record since the oldest is read.
        many = {f"{n}": NOW - timedelta(days=31) for n in range(100)}
        assert ledger.offers(many, NOW).of("eve@x.org", many) == {"99", "80"}
        assert ledger.offers({}, NOW).held == {}


def test_a_clock_days_slow_hides_only_its_own_deliveries(store_target: StoreTarget) -> None:
    """Review finding: the first record of the window is found by bisecting the ids on the
    time each was sent. One host whose clock is days slow (outside what the README allows)
    wrote the newest record, or the one a probe lands on: everything the others sent since was
    cut off, so their papers went out again. A probe reads a window of records, whose latest
    time counts; and the prune deletes no more than the time says."""
    from datetime import timedelta

    from digest_mailer.store import ranges
    from digest_mailer.store.retention import Retention, prune

    with Ledger.open(store_target) as ledger:
        box = ledger.outbox

        def deliver(to: str, n: int, papers: list[str], when: datetime) -> None:
            entry = box.add(message(to, f"<{to}.{n}@x>"), run_id=None, included=papers,
                            offered=papers, now=when)
            box.sent(entry, when, None)

        start = NOW - timedelta(days=200)
        for n in range(60):  # a history, one record a day
            deliver("old@x.org", n, [f"o{n}"], start + timedelta(days=n * 3))
        ledger.remember([Paper(id="P", title="T", upvotes=1)], NOW)
        for n in range(40):  # today's run: a right clock and one three days slow, in turn
            slow = timedelta(days=3) if n % 2 else timedelta(0)
            deliver(f"r{n}@x.org", n, ["P"], NOW + timedelta(minutes=n) - slow)
        deliver("last@x.org", 0, ["P"], NOW + timedelta(hours=1) - timedelta(days=3))
        # And the newest of all from a clock 40 days slow: older than the prune's cut.
        deliver("late@x.org", 0, ["P"], NOW + timedelta(hours=2) - timedelta(days=40))
        since = ledger.first_seen(["P"])["P"]
        offers = ledger.offers({"P": since}, NOW)
        for n in range(0, 40, 2):
            assert offers.of(f"r{n}@x.org", ["P"]) == {"P"}
            assert ledger.offered_ids(f"r{n}@x.org", among=["P"], since=since) == {"P"}
        prune(ledger, Retention(offer_days=21, history_days=30), NOW + timedelta(days=2))
        left = [d.subscriber for d in ledger.deliveries()]
        assert sum(1 for who in left if who.startswith("r")) == 40  # today's, all kept
        # Of the history, the two records within the 30 days, and at most a window of
        # records past the cut (pruned by a later run).
        assert 2 <= left.count("old@x.org") <= 2 + ranges.WINDOW


def test_a_failed_write_records_nothing(store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
        def add(who: str, paper: str) -> int:
            return ledger.outbox.add(message(who, "<m1@x>"), run_id=None, included=[paper],
                                     offered=[paper], now=NOW)

        add("a@x.org", "1")
        with pytest.raises(StoreError):  # the same Message-ID twice violates UNIQUE
            add("b@x.org", "2")
        assert ledger.offered_ids("b@x.org") == frozenset()
        assert ledger.offered_ids("a@x.org") == {"1"}  # held by its unsent message


def test_outbox_states_and_what_counts_as_offered(store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
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
        # Failed at the time of its delivery: counted (as before: failures from then on).
        assert box.failed_in_a_row("a@x.org", 2) and not box.failed_in_a_row("a@x.org", 3)
        assert ledger.offered_ids("a@x.org") == {"1", "2"}  # failed messages hold nothing
        assert box.counts() == {"sent": 1, "failed": 2}
        box.prune_sets()
        assert box.load_set(set_id) is None  # no unsent message needs it


def test_suppressions_are_idempotent(store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
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


def test_papers_history_runs_and_counts_on_either_engine(store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
        ledger.remember([Paper(id="2506.00001", title="One", upvotes=3,
                               listed_on=date(2025, 6, 1)),
                         Paper(id="2506.00002", title="Two", upvotes=9)], NOW)
        # A later sighting keeps the higher count and takes the newer title.
        ledger.remember([Paper(id="2506.00001", title="One (v2)", upvotes=1)], NOW)
        assert ledger.titles(["2506.00001", "2506.00002", "x"]) == {
            "2506.00001": "One (v2)", "2506.00002": "Two"}
        days = ledger.recent_titles(1)
        assert list(days) == ["2025-06-02"] and [p.id for p in days["2025-06-02"]] == \
            ["2506.00002"]
        run = ledger.start_run(NOW, date(2025, 6, 2), "feed")
        box = ledger.outbox
        sent = box.add(message("ada@x.org", "<a@x>"), run_id=run,
                       included=["2506.00001", "2506.00002"], offered=["2506.00001",
                                                                     "2506.00002"], now=NOW)
        failed = box.add(message("bob@x.org", "<b@x>"), run_id=run, included=["2506.00002"],
                         offered=["2506.00002"], now=NOW)
        box.sent(sent, NOW, run, subject="Two papers")
        box.failed(failed, NOW, "550 no such user")
        ledger.finish_run(run, NOW, fetched=2, sent=1, failed=1,
                          outcome=ledger.runs()[-1].outcome.__class__("failures"))
        rows = ledger.history()
        assert [(r.subscriber, r.state, r.papers, r.reason) for r in rows] == [
            ("ada@x.org", MessageState.SENT, ("2506.00001", "2506.00002"), ""),
            ("bob@x.org", MessageState.FAILED, ("2506.00002",), "550 no such user")]
        assert rows[0].titles == ("One (v2)", "Two") and rows[0].subject == "Two papers"
        assert [r.message_id for r in ledger.history(paper="2506.00001")] == ["<a@x>"]
        assert ledger.history(subscriber="nobody@x.org") == []
        assert ledger.history(since=date(2025, 6, 3)) == []
        assert ledger.offer_log("ADA@x.org")["2506.00002"] == (NOW.isoformat(), True)
        (record,) = ledger.runs(limit=1)
        assert (record.sent, record.failed, record.outcome) == (1, 1, "failures")
        assert ledger.counts() == {"deliveries": 1, "papers": 2, "subscribers_reached": 1,
                                   "runs": 1}
        assert box.counts() == {"sent": 1, "failed": 1}
        assert box.problems() == [(NOW.isoformat(), "bob@x.org", "failed", "550 no such user")]
        assert ledger.last_run_started() == NOW.isoformat()


def test_server_trouble_counts_once_then_blocks(store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
        run = ledger.start_run(NOW, date(2025, 6, 2), "x")
        first = ledger.server_trouble(run, "421 busy", 100.0, [30.0])
        assert (first.hold_until, first.trouble, first.blocked) == (130.0, 1, False)
        again = ledger.server_trouble(run, "421 busy", 110.0, [30.0])  # held off: same one
        assert again.trouble == 1
        last = ledger.server_trouble(run, "421 busy", 140.0, [30.0])
        assert last.blocked and ledger.run_control(run).blocked


def test_two_claimers_never_take_the_same_row(store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as one, Ledger.open(store_target) as two:
        run = one.start_run(NOW, date(2025, 6, 2), "x")
        set_id = one.outbox.add_set(b"t", NOW)
        for n in range(40):
            one.outbox.add(message(f"s{n}@x.org", f"<{n}@x>", set_id=set_id), run_id=run,
                           included=["1"], offered=["1"], now=NOW)
        taken: list[int] = []
        while True:
            a = one.outbox.claim(run, "a", 3, NOW.timestamp(), 60)
            b = two.outbox.claim(run, "b", 3, NOW.timestamp(), 60)
            if not a and not b:
                break
            taken += [e.id for e in a + b]
        assert len(taken) == 40 == len(set(taken))


def test_a_url_with_a_password_is_refused() -> None:
    with pytest.raises(StoreError, match="carries a password") as info:
        StoreTarget.parse("postgresql://ada:secret@db.example.org/digest")
    assert "secret" not in str(info.value) and "DIGEST_STATE_PASSWORD" in (info.value.hint or "")
    with pytest.raises(StoreError, match="not a PostgreSQL URL"):
        StoreTarget.parse("mysql://ada@db.example.org/digest")
    assert StoreTarget.parse("some/file.sqlite3").sqlite_path == Path("some/file.sqlite3")


# -- PostgreSQL's own ways to fail: one StoreError each, with a hint ------------------------

def test_no_server_at_the_address_is_one_error(pg_server: str) -> None:
    from conftest import free_port

    target = StoreTarget.parse(f"postgresql://digest@127.0.0.1:{free_port()}/digest")
    with pytest.raises(StoreError, match="cannot connect to the ledger's PostgreSQL server"
                       ) as info:
        Ledger.open(target)
    assert "host and port" in (info.value.hint or "")


def test_a_missing_database_is_one_error(pg_server: str) -> None:
    target = StoreTarget.parse(pg_server.rsplit("/", 1)[0] + "/no_such_db")
    with pytest.raises(StoreError, match="no such database") as info:
        Ledger.open(target)
    assert "createdb" in (info.value.hint or "")


def test_the_password_comes_from_the_environment_or_a_file(
        pg_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from conftest import fresh_pg_database

    with fresh_pg_database(pg_server) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS secure")
            conn.execute("CREATE ROLE secure LOGIN SUPERUSER PASSWORD 'right horse'")
        secure = url.replace("postgresql://digest@", "postgresql://secure@")
        monkeypatch.setenv("DIGEST_STATE_PASSWORD", "wrong")
        with pytest.raises(StoreError, match="refused the login") as info:
            Ledger.open(StoreTarget.parse(secure))
        assert "DIGEST_STATE_PASSWORD" in (info.value.hint or "")
        assert "wrong" not in str(info.value)
        monkeypatch.delenv("DIGEST_STATE_PASSWORD")
        secret = tmp_path / "pw"
        secret.write_text("right horse\n")
        with pytest.raises(StoreError, match="readable by others"):
            Ledger.open(StoreTarget.parse(secure, password_file=str(secret)))
        secret.chmod(0o600)
        with Ledger.open(StoreTarget.parse(secure, password_file=str(secret))) as ledger:
            assert ledger.suppress("a@x.org", "unsubscribed", NOW)
        monkeypatch.setenv("MY_PG_PASSWORD", "right horse")
        with Ledger.open(StoreTarget.parse(secure, password_env="MY_PG_PASSWORD")) as ledger:
            assert ledger.suppressed("a@x.org") == "unsubscribed"


def test_state_url_chooses_postgresql_and_keeps_passwords_out(tmp_path: Path) -> None:
    from conftest import base_config, toml_text
    from digest_mailer.config import load_config
    from digest_mailer.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path)))
    assert load_config(path).state_target == StoreTarget.sqlite(tmp_path / "state.sqlite3")
    doc = base_config(tmp_path, state={"url": "postgresql://digest@db.example.org:5432/news",
                                       "password_file": "pg-password"})
    path.write_text(toml_text(doc))
    target = load_config(path).state_target
    assert (target.kind, target.url, target.password_file) == (
        "postgresql", "postgresql://digest@db.example.org:5432/news",
        str(tmp_path / "pg-password"))
    doc["state"]["url"] = "postgresql://digest:hunter2@db.example.org/news"
    path.write_text(toml_text(doc))
    with pytest.raises(ConfigError, match=r"state\.url.*carries a password") as info:
        load_config(path)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("held", [0.02, 0.5])
def test_a_writer_waits_for_another_writers_transaction_however_long(tmp_path: Path,
                                                                     held: float) -> None:
    """A write transaction first looks for the lock every tenth of a millisecond (SQLite's
    own wait sleeps a millisecond and more), then waits as SQLite does: a lock held past the
    quick looks (0.5 s) is still waited for, and the connection's own wait is as before."""
    import threading
    import time

    path = tmp_path / "state.sqlite3"
    with Ledger.open(path) as ledger:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO suppressions (subscriber, reason, since) "
                      "VALUES ('a@example.org', 'test', 'now')")
        started = time.monotonic()
        threading.Timer(held, other.commit).start()
        with ledger.transaction() as db:
            waited = time.monotonic() - started
            rows = db.driver_sql("SELECT count(*) FROM suppressions").scalar()
        assert waited >= held * 0.9 and rows == 1  # it waited, and saw the other's commit
        assert ledger.conn.driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        other.close()


def test_an_error_other_than_a_busy_lock_is_raised_at_once(tmp_path: Path) -> None:
    from digest_mailer.store.db import _begin_immediate

    class Counting:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn, self.begins = conn, 0

        def execute(self, sql: str) -> sqlite3.Cursor:
            self.begins += sql == "BEGIN IMMEDIATE"
            return self.conn.execute(sql)

    conn = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None, timeout=30)
    conn.execute("BEGIN")
    counted = Counting(conn)
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        _begin_immediate(counted)
    assert counted.begins == 1  # not tried again: only a busy lock is
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (30_000,)
    conn.close()
