"""The retention policy, on both engines: history (which also says what was offered to whom)
with keep_history and at least the feed window, and longer for an email whose paper is still
in the feeds; bodies once sent; suppressions stay; what a run reads does not grow with it."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import NOW, SmtpServer, base_config, go, local_smtp, toml_text
from digest_mailer.models import OutgoingMessage, Paper, Status
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.retention import Retention, prune

POLICY = Retention(offer_days=21, history_days=365)


def day(n: int) -> datetime:
    return NOW + timedelta(days=n)


def send(ledger: Ledger, to: str, included: list[str], offered: list[str], when: datetime,
         mid: str) -> None:
    run = ledger.start_run(when, when.date(), "feed")
    set_id = ledger.outbox.add_set(b"template", when)
    entry = ledger.outbox.add(
        OutgoingMessage(recipient=to, envelope_from="p@x.org", message_id=mid, subject="S",
                        data=b"", html="", run_date=when.date(), set_id=set_id),
        run_id=run, included=included, offered=offered, now=when)
    ledger.outbox.sent(entry, when, run)
    ledger.finish_run(run, when, fetched=1, sent=1, failed=0,
                      outcome=ledger.runs()[-1].outcome.__class__("ok"))


def offered(ledger: Ledger, to: str, among: list[str]) -> frozenset[str]:
    """As a run asks: among these papers, since the earliest was first seen."""
    seen = ledger.first_seen(among)
    if not seen:
        return frozenset()
    since = min(seen.values())
    found = ledger.offered_ids(to, among=among, since=since)
    # A run reads it for all its subscribers at once: the same answer, with the papers read
    # as recent ones (a range of records) and as old ones (records picked out by name).
    papers = {pid: seen.get(pid, NOW) for pid in among}
    for now in (max(seen.values()) + timedelta(days=1), max(seen.values()) + timedelta(400)):
        assert ledger.offers(papers, now).of(to, among) == found
    return found


def test_history_keeps_what_was_offered_and_goes_after_keep_history(
        store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
        ledger.remember([Paper(id="2506.00001", title="Gone soon", upvotes=1),
                         Paper(id="2506.00002", title="Stays in the feed", upvotes=1)], day(0))
        send(ledger, "ada@x.org", ["2506.00001", "2506.00002"], ["2506.00001", "2506.00002"],
             day(0), "<a@x>")
        failed = ledger.outbox.add(
            OutgoingMessage(recipient="bob@x.org", envelope_from="p@x.org", message_id="<b@x>",
                            subject="S", data=b"", html="", run_date=date(2025, 6, 2)),
            run_id=None, included=["2506.00001"], offered=["2506.00001"], now=day(0))
        ledger.outbox.failed(failed, day(0), "550 no such user")
        ledger.suppress("eve@x.org", "unsubscribed", day(0))
        # The second paper is in every feed for a month.
        for n in range(1, 31):
            ledger.remember([Paper(id="2506.00002", title="Stays in the feed", upvotes=1)],
                            day(n))
        assert prune(ledger, POLICY, day(20)).total == 0  # inside the window: nothing goes
        done = prune(ledger, POLICY, day(30))
        assert done.deliveries == 0 and done.messages == 1  # the sent row: past the window
        # Neither paper goes to her again while the history holds the email.
        assert offered(ledger, "ada@x.org", ["2506.00001", "2506.00002"]) == {
            "2506.00001", "2506.00002"}
        # History still shows the email and its papers, with their titles.
        (sent,) = [r for r in ledger.history() if r.state == "sent"]
        assert sent.papers == ("2506.00001", "2506.00002")
        assert sent.titles == ("Gone soon", "Stays in the feed")
        assert ledger.outbox.counts() == {"failed": 1}  # the sent row went with the window
        assert ledger.outbox.load_set(1) is None  # and the body with the send
        # A paper stays the offer window longer than the history: the first goes now.
        done = prune(ledger, POLICY, day(400))
        assert (done.deliveries, done.papers, done.messages) == (1, 1, 1)
        assert offered(ledger, "ada@x.org", ["2506.00002"]) == frozenset()
        assert ledger.history() == [] and ledger.titles(["2506.00001"]) == {}
        assert prune(ledger, POLICY, day(420)).papers == 1
        assert ledger.suppressed("eve@x.org") == "unsubscribed"
        assert prune(ledger, POLICY, day(451)).total == 0 and len(ledger.runs()) == 1


def test_what_was_offered_is_read_since_the_papers_were_first_seen(
        store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
        for n in range(60):
            papers = [f"2506.{n * 10 + k:05d}" for k in range(10)]
            ledger.remember([Paper(id=p, title=p, upvotes=1) for p in papers], day(n))
            send(ledger, "ada@x.org", papers[:3], papers, day(n), f"<{n}@x>")
        # Today's papers, and one from day 5 still in the feed: both kinds are found.
        ledger.remember([Paper(id="2506.00051", title="Lasting", upvotes=1)], day(59))
        among = ["2506.00590", "2506.00599", "2506.00051", "2506.99999"]
        assert offered(ledger, "ada@x.org", among) == {"2506.00590", "2506.00599",
                                                      "2506.00051"}
        since = ledger.first_seen(["2506.00590"])["2506.00590"]
        assert since == day(59)
        assert ledger.offered_ids("ada@x.org", among=among, since=since) == {
            "2506.00590", "2506.00599"}  # the deliveries before day 58 are not read
        assert len(ledger.offered_ids("ada@x.org")) == 600  # all of them, without `since`
        # A worker whose clock is an hour behind the run's: its delivery still counts.
        ledger.remember([Paper(id="2507.00001", title="New", upvotes=1)], day(60))
        send(ledger, "bob@x.org", ["2507.00001"], ["2507.00001"], day(60) - timedelta(hours=1),
             "<skewed@x>")
        assert offered(ledger, "bob@x.org", ["2507.00001"]) == {"2507.00001"}


def test_a_paper_is_remembered_as_long_as_the_late_email_that_offered_it(
        store_target: StoreTarget) -> None:
    """Review finding: a message sent days after its paper was last seen (it was deferred)
    outlived the paper's row; the paper, back in a feed, was new again and went to the same
    subscriber twice."""
    policy = Retention(offer_days=21, history_days=1)  # keep_history = "1d" is allowed
    with Ledger.open(store_target) as ledger:
        ledger.remember([Paper(id="2506.00001", title="T", upvotes=1)], day(0))
        send(ledger, "ada@x.org", ["2506.00001"], ["2506.00001"], day(3), "<late@x>")
        prune(ledger, policy, day(21) + timedelta(hours=12))
        ledger.remember([Paper(id="2506.00001", title="T", upvotes=1)], day(22))
        assert offered(ledger, "ada@x.org", ["2506.00001"]) == {"2506.00001"}


@pytest.mark.parametrize("how", ["one", "everyone"])
def test_a_message_recorded_during_the_look_up_is_seen(tmp_path: Path, how: str,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Review finding: the look-up read the deliveries, then the unsent messages; a sender
    recording a message between the two reads hid its papers from both. For one subscriber
    (`offered_ids`) and for a run's read of everyone's (`offers`): the sender records it right
    after the first of the two reads, whichever it is (the other order fails here)."""
    path = tmp_path / "state.sqlite3"
    with Ledger.open(path) as ledger, Ledger.open(path) as sender:
        ledger.remember([Paper(id="2506.00001", title="T", upvotes=1)], NOW)
        # Someone else's delivery: there are records to read.
        send(ledger, "bob@x.org", ["2506.00001"], ["2506.00001"], NOW, "<b@x>")
        entry = ledger.outbox.add(
            OutgoingMessage(recipient="ada@x.org", envelope_from="p@x.org",
                            message_id="<a@x>", subject="S", data=b"", html="",
                            run_date=NOW.date()),
            run_id=None, included=["2506.00001"], offered=["2506.00001"], now=NOW)
        reads: list[object] = []

        def after_the_first(real: Any) -> Any:
            def read(stmt: Any, *args: Any) -> Any:
                rows = real(stmt, *args)  # read whole (store.db.Rows)
                sql = str(stmt)
                if not reads and ("outbox.offered" in sql or "deliveries.included" in sql):
                    reads.append(sql)  # one of the two reads is done: the sender records it
                    sender.outbox.sent(entry, NOW + timedelta(seconds=1), None)
                return rows
            return read

        monkeypatch.setattr(ledger.conn, "hot", after_the_first(ledger.conn.hot))
        monkeypatch.setattr(ledger.conn, "execute", after_the_first(ledger.conn.execute))
        among = ["2506.00001"]
        found = ledger.offered_ids("ada@x.org", among=among, since=NOW) if how == "one" \
            else ledger.offers(dict.fromkeys(among, NOW), NOW).of("ada@x.org", among)
        assert reads and found == {"2506.00001"}
        assert ledger.history(subscriber="ada@x.org")[0].message_id == "<a@x>"  # it was sent


def test_what_a_run_reads_of_the_offers_does_not_grow_with_the_history(
        tmp_path: Path) -> None:
    """SQLite's virtual machine steps for a run's read of what was offered to its 300
    subscribers, with a week and with a year of their emails kept: within a tenth (the whole
    history read was 40 times the work). What grows is the bisection for the window's first
    id: some 20 look-ups by primary key at most, once a run."""
    from sqlalchemy import insert

    from digest_mailer.store.tables import deliveries

    steps = []
    for days in (7, 365):
        with Ledger.open(tmp_path / f"{days}.sqlite3") as ledger:
            rows = []
            for n in range(days):
                papers = [f"{n:04d}.{k:05d}" for k in range(10)]
                ledger.remember([Paper(id=p, title=p, upvotes=1) for p in papers], day(n))
                rows += [{"subscriber": f"r{k}@x.org", "message_id": f"<{n}.{k}@x>",
                          "subject": "S", "sent_at": day(n).isoformat(), "papers": 3,
                          "included": " ".join(papers[:3]), "over_cap": " ".join(papers[3:])}
                         for k in range(300)]
            with ledger.transaction() as db:
                db.execute(insert(deliveries), rows)
            today = [f"{days - 1:04d}.{k:05d}" for k in range(10)]
            since = min(ledger.first_seen(today).values())
            ticks = [0]

            def tick(ticks: list[int] = ticks) -> int:
                ticks[0] += 1
                return 0

            ledger.conn.raw.set_progress_handler(tick, 10)
            offers = ledger.offers(dict.fromkeys(today, since), day(days - 1))
            ledger.conn.raw.set_progress_handler(None, 10)
            assert all(offers.of(f"r{k}@x.org", today) == set(today) for k in range(300))
            steps.append(ticks[0])
    assert steps[1] < 1.1 * steps[0], steps


def test_a_run_prunes_at_its_end(tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path, smtp=local_smtp(smtp_server.port,
                                                                    connections=0))))
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        ledger.remember([Paper(id="2401.00001", title="Old", upvotes=1)], day(-90))
        send(ledger, "old@x.org", ["2401.00001"], ["2401.00001"], day(-90), "<old@x>")
    report = go(path)
    assert report.delivered >= 1
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        # The old message's row, past the window, pruned; today's went at the run's end.
        assert ledger.outbox.counts() == {}
        assert [r.message_id for r in ledger.history(subscriber="old@x.org")] == ["<old@x>"]


def test_a_run_forgets_the_rows_of_what_it_sent_and_keeps_the_rest(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    """The outbox holds what is unsent and what failed; a sent message's row goes at the end
    of its run (its record is the delivery), so the queue stays a day long."""
    smtp_server.handler.refuse = {"grace@example.org": "550 5.1.1 No such user"}
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path, smtp=local_smtp(smtp_server.port,
                                                                    connections=0))))
    report = go(path)
    assert report.delivered == 1 and report.failed == 1
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        assert ledger.outbox.counts() == {"failed": 1}
        assert {(r.subscriber, r.state) for r in ledger.history()} == {
            ("ada@example.org", "sent"), ("grace@example.org", "failed")}
        assert ledger.offer_log("ada@example.org")  # what she was offered: in the delivery
    # A compose-only run leaves its rows to the `send` workers.
    (tmp_path / "w").mkdir()
    path.write_text(toml_text(base_config(tmp_path / "w")))
    composed = go(path, compose_only=True)
    with Ledger.open_readonly(tmp_path / "w" / "state.sqlite3") as ledger:
        assert ledger.outbox.counts() == {"pending": composed.count(Status.PENDING)}
        assert composed.count(Status.PENDING) == 2


def test_hard_failures_in_a_row_count_from_the_last_delivery_after_pruning(
        store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
        box = ledger.outbox

        def fail(n: int, when: datetime) -> None:
            entry = box.add(OutgoingMessage(recipient="cy@x.org", envelope_from="p@x.org",
                                            message_id=f"<f{n}@x>", subject="S", data=b"",
                                            html="", run_date=when.date()),
                            run_id=None, included=["1"], offered=["1"], now=when)
            box.failed(entry, when, "550 mailbox full")

        fail(1, day(0))
        fail(2, day(1))
        send(ledger, "cy@x.org", ["2506.00009"], ["2506.00009"], day(2), "<ok@x>")
        prune(ledger, POLICY, day(40))  # the sent row goes; the failures stay (history)
        assert box.counts() == {"failed": 2}
        fail(3, day(41))
        assert box.failed_in_a_row("cy@x.org", 1)
        assert not box.failed_in_a_row("cy@x.org", 2)  # the delivery on day 2 came between
        fail(4, day(42))
        fail(5, day(43))
        assert box.failed_in_a_row("cy@x.org", 3)
        assert not box.failed_in_a_row("cy@x.org", 4)
        send(ledger, "cy@x.org", ["2506.00010"], ["2506.00010"], day(44), "<ok2@x>")
        assert not box.failed_in_a_row("cy@x.org", 1)


def test_history_is_cut_at_the_right_day_with_gaps_in_the_ids(
        store_target: StoreTarget) -> None:
    from sqlalchemy import delete

    from digest_mailer.store.tables import deliveries

    with Ledger.open(store_target) as ledger:
        for n in range(50):
            send(ledger, f"r{n}@x.org", ["2506.00001"], ["2506.00001"], day(n), f"<{n}@x>")
        holes = [3, 17, 18, 19, 30, 31]  # as earlier prunes and copies leave them
        with ledger.transaction() as db:
            db.execute(delete(deliveries).where(deliveries.c.id.in_(holes)))
        policy = Retention(offer_days=1, history_days=20)
        prune(ledger, policy, day(49) + timedelta(hours=1))
        kept = sorted(int(r.message_id[1:-3]) for r in ledger.history())
        assert kept == list(range(31, 50))  # day 29's and older gone; 30's was a hole
        assert prune(ledger, policy, day(49) + timedelta(hours=1)).deliveries == 0


def _history(ledger: Ledger, old: int, recent: int) -> None:
    """`old` emails sent on day 0 of papers out of the feeds since; `recent` ones sent on days
    300-330, each of ten papers, written as a sender writes them."""
    from digest_mailer.store.tables import deliveries

    stale = [Paper(id=f"2501.{n:05d}", title="Old", upvotes=1) for n in range(10)]
    fresh = [Paper(id=f"2506.{n:05d}", title="New", upvotes=1) for n in range(10)]
    ledger.remember(stale, day(0))
    ledger.remember(fresh, day(330))
    with ledger.transaction() as db:
        db.executemany(deliveries.insert(), [
            {"subscriber": f"r{n}@x.org", "message_id": f"<{n}@x>", "subject": "S",
             "sent_at": (day(0) if n < old else day(300 + n % 30)).isoformat(), "papers": 10,
             "included": " ".join(p.id for p in (stale if n < old else fresh))}
            for n in range(old + recent)])


def test_the_prune_reads_the_old_history_not_all_of_it(tmp_path: Path) -> None:
    """The work of the prune (SQLite's virtual machine steps, counted by its progress
    handler) is the same with ten times more recent emails: it reaches the old ones as a
    range of ids instead of reading every one to find them."""
    steps = []
    for n, recent in enumerate((300, 3_000)):
        with Ledger.open(tmp_path / f"{n}.sqlite3") as ledger:
            _history(ledger, old=100, recent=recent)
            ticks = [0]

            def tick(ticks: list[int] = ticks) -> int:
                ticks[0] += 1
                return 0

            ledger.conn.raw.set_progress_handler(tick, 100)
            assert prune(ledger, POLICY, day(366)).deliveries == 100
            ledger.conn.raw.set_progress_handler(None, 100)
            steps.append(ticks[0])
            assert ledger.counts()["deliveries"] == recent
    assert steps[1] < 1.5 * steps[0], steps


def test_the_prune_deletes_a_range_of_ids_on_sqlite(tmp_path: Path) -> None:
    """The query plan of what the prune ran: the deliveries searched by their id (the
    rowid), not scanned."""
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        _history(ledger, old=100, recent=100)
        ran: list[str] = []
        ledger.conn.raw.set_trace_callback(ran.append)
        assert prune(ledger, POLICY, day(366)).deliveries == 100
        ledger.conn.raw.set_trace_callback(None)
        (sql,) = [s for s in ran if s.lstrip().upper().startswith("DELETE FROM DELIVERIES")]
        plan = [r[3] for r in ledger.conn.raw.execute("EXPLAIN QUERY PLAN " + sql)]
        assert any(p.startswith("SEARCH deliveries USING INTEGER PRIMARY KEY (rowid<")
                   for p in plan), plan
        assert not any(p.startswith("SCAN deliveries") for p in plan), plan


def test_a_delivery_whose_offer_is_still_kept_stays_past_its_history(
        store_target: StoreTarget) -> None:
    """Emails past the history go, except those that offered a paper still in the feeds:
    they are what keeps it from going to that subscriber again. A history shorter than the
    feed window is kept as long as the window."""
    short = Retention(offer_days=21, history_days=10)
    assert short.kept_days == 21
    with Ledger.open(store_target) as ledger:
        ledger.remember([Paper(id="2506.00001", title="Lasting", upvotes=1),
                         Paper(id="2506.00002", title="Gone", upvotes=1)], day(0))
        send(ledger, "ada@x.org", ["2506.00001"], ["2506.00001"], day(0), "<lasting@x>")
        send(ledger, "bob@x.org", ["2506.00002"], ["2506.00002"], day(0), "<gone@x>")
        for n in range(1, 16):  # each day's email offers that day's paper
            pid = f"2506.{10_000 + n}"
            ledger.remember([Paper(id=pid, title="Daily", upvotes=1),
                             Paper(id="2506.00001", title="Lasting", upvotes=1)], day(n))
            send(ledger, f"r{n}@x.org", [pid], [pid], day(n), f"<{n}@x>")
        # Day 30: the emails before day 9 go (bob's, days 1-8), but ada's: its paper was in
        # a feed on day 15, inside the window.
        done = prune(ledger, short, day(30))
        assert done.deliveries == 9
        assert [r.message_id for r in ledger.history()] == [
            "<lasting@x>", *(f"<{n}@x>" for n in range(9, 16))]
        assert ledger.offer_log("ada@x.org") == {"2506.00001": (day(0).isoformat(), True)}
        assert ledger.offered_ids("bob@x.org") == frozenset()
        assert offered(ledger, "ada@x.org", ["2506.00001"]) == {"2506.00001"}
        # Once the paper has been out of the feeds for the window, her email goes too.
        assert prune(ledger, short, day(37)).deliveries == 8  # with days 9-15
