"""The retention policy, on both engines: offers go with the feed window, history with
keep_history, bodies once sent; suppressions stay; offered_ids stays small."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

from conftest import NOW, SmtpServer, base_config, go, local_smtp, toml_text
from digest_mailer.models import OutgoingMessage, Paper
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


def test_offers_follow_the_feed_window_and_history_keep_history(
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
        assert prune(ledger, POLICY, day(20)).offers == 0  # still inside the window
        done = prune(ledger, POLICY, day(30))
        assert done.offers == 1 and done.deliveries == 0
        # The paper gone from the feeds is offered again; the one still there is not.
        assert ledger.offered_ids("ada@x.org") == {"2506.00002"}
        # History still shows the email and its papers, with their titles.
        (sent,) = [r for r in ledger.history() if r.state == "sent"]
        assert sent.papers == ("2506.00001", "2506.00002")
        assert sent.titles == ("Gone soon", "Stays in the feed")
        assert ledger.outbox.counts() == {"failed": 1}  # the sent row went with the window
        assert ledger.outbox.load_set(1) is None  # and the body with the send
        done = prune(ledger, POLICY, day(400))
        assert (done.deliveries, done.papers, done.messages) == (1, 2, 1)
        assert ledger.history() == [] and ledger.titles(["2506.00001"]) == {}
        assert ledger.suppressed("eve@x.org") == "unsubscribed"
        assert prune(ledger, POLICY, day(431)).total == 0 and len(ledger.runs()) == 1


def test_offered_ids_stays_small_over_a_long_history(store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as ledger:
        sizes = []
        for n in range(90):
            papers = [f"2506.{n * 10 + k:05d}" for k in range(10)]
            ledger.remember([Paper(id=p, title=p, upvotes=1) for p in papers], day(n))
            send(ledger, "ada@x.org", papers[:3], papers, day(n), f"<{n}@x>")
            prune(ledger, POLICY, day(n))
            sizes.append(len(ledger.offered_ids("ada@x.org")))
        # A day's ten papers for the 21 days of the window (and the day itself): flat.
        assert sizes[-1] == sizes[40] == 10 * (21 + 1)
        assert len(ledger.history()) == 90  # while history keeps every email


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
        assert ledger.offered_ids("old@x.org") == frozenset()  # past the window: pruned
        assert [r.message_id for r in ledger.history(subscriber="old@x.org")] == ["<old@x>"]


def test_hard_failures_count_from_the_last_delivery_after_pruning(
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
        assert box.hard_failures("cy@x.org") == 1


def test_history_is_cut_at_the_right_day_with_gaps_in_the_ids(
        store_target: StoreTarget) -> None:
    from sqlalchemy import delete

    from digest_mailer.store.tables import deliveries, offers

    with Ledger.open(store_target) as ledger:
        for n in range(50):
            send(ledger, f"r{n}@x.org", ["2506.00001"], ["2506.00001"], day(n), f"<{n}@x>")
        holes = [3, 17, 18, 19, 30, 31]  # as earlier prunes and copies leave them
        with ledger.transaction() as db:
            db.execute(delete(offers).where(offers.c.delivery_id.in_(holes)))
            db.execute(delete(deliveries).where(deliveries.c.id.in_(holes)))
        policy = Retention(offer_days=1, history_days=20)
        prune(ledger, policy, day(49) + timedelta(hours=1))
        kept = sorted(int(r.message_id[1:-3]) for r in ledger.history())
        assert kept == list(range(31, 50))  # day 29's and older gone; 30's was a hole
        assert prune(ledger, policy, day(49) + timedelta(hours=1)).deliveries == 0


def _history(ledger: Ledger, old: int, recent: int) -> None:
    """`old` offers of papers out of the feeds since day 0, recorded on day 0; `recent` ones
    of papers in the feed on day 30, recorded on days 10-30 (ten offers an email, written as
    a sender writes them: a delivery, then its offers)."""
    from digest_mailer.store.tables import deliveries, offers

    stale = [Paper(id=f"2501.{n:05d}", title="Old", upvotes=1) for n in range(10)]
    fresh = [Paper(id=f"2506.{n:05d}", title="New", upvotes=1) for n in range(10)]
    ledger.remember(stale, day(0))
    ledger.remember(fresh, day(30))
    with ledger.transaction() as db:
        for n in range((old + recent) // 10):
            when, papers = (day(0), stale) if n < old // 10 else (day(10 + n % 20), fresh)
            delivery = db.execute(deliveries.insert().values(
                subscriber=f"r{n}@x.org", message_id=f"<{n}@x>", subject="S",
                sent_at=when.isoformat(), papers=10)).inserted
            db.executemany(offers.insert(), [
                {"subscriber": f"r{n}@x.org", "paper_id": p.id, "delivery_id": delivery,
                 "included": 1} for p in papers])


def test_the_prune_deletes_exactly_the_stale_offers(store_target: StoreTarget) -> None:
    from sqlalchemy import text

    with Ledger.open(store_target) as ledger:
        _history(ledger, old=200, recent=2000)
        # A message that waited: recorded on day 25 (inside the window), its paper stale.
        late = ledger.outbox.add(
            OutgoingMessage(recipient="late@x.org", envelope_from="p@x.org",
                            message_id="<late@x>", subject="S", data=b"", html="",
                            run_date=day(25).date()),
            run_id=None, included=["2501.00003"], offered=["2501.00003"], now=day(25))
        ledger.outbox.sent(late, day(25), None)
        done = prune(ledger, POLICY, day(30))
        assert done.offers == 200 and done.deliveries == 0
        left = ledger.conn.execute(text("SELECT paper_id, subscriber FROM offers")).fetchall()
        assert len(left) == 2001
        assert {p for p, _ in left if p.startswith("2501.")} == {"2501.00003"}
        assert ledger.offered_ids("r0@x.org") == frozenset()  # offered again if it came back
        assert len(ledger.offered_ids("r100@x.org")) == 10
        # The late offer goes once it is older than the window, as the old ones did.
        assert prune(ledger, POLICY, day(40)).offers == 0
        assert prune(ledger, POLICY, day(50)).offers == 1
        assert ledger.offered_ids("late@x.org") == frozenset()


def test_the_prune_reads_the_old_offers_not_every_offer(tmp_path: Path) -> None:
    """The work of the prune (SQLite's virtual machine steps, counted by its progress
    handler) is the same with ten times more recent offers: it reaches the old ones as a
    range of ids instead of reading every offer to find them."""
    steps = []
    for n, recent in enumerate((3_000, 30_000)):
        with Ledger.open(tmp_path / f"{n}.sqlite3") as ledger:
            _history(ledger, old=1_000, recent=recent)
            ticks = [0]

            def tick(ticks: list[int] = ticks) -> int:
                ticks[0] += 1
                return 0

            ledger.conn.raw.set_progress_handler(tick, 100)
            assert prune(ledger, POLICY, day(30)).offers == 1_000
            ledger.conn.raw.set_progress_handler(None, 100)
            steps.append(ticks[0])
            assert ledger.counts()["offers"] == recent
    # Reading every offer made it about six times the work (measured: 404 and 2,565).
    assert steps[1] < 1.5 * steps[0], steps


def test_the_prune_deletes_a_range_of_ids_on_sqlite(tmp_path: Path) -> None:
    """The query plan of what the prune ran: the offers searched by their id (the rowid),
    not scanned."""
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        _history(ledger, old=100, recent=100)
        ran: list[str] = []
        ledger.conn.raw.set_trace_callback(ran.append)
        assert prune(ledger, POLICY, day(30)).offers == 100
        ledger.conn.raw.set_trace_callback(None)
        (sql,) = [s for s in ran if s.lstrip().upper().startswith("DELETE FROM OFFERS")]
        plan = [r[3] for r in ledger.conn.raw.execute("EXPLAIN QUERY PLAN " + sql)]
        assert any(p.startswith("SEARCH offers USING INTEGER PRIMARY KEY (rowid<")
                   for p in plan), plan
        assert not any(p.startswith("SCAN offers") for p in plan), plan


def test_a_delivery_whose_offer_is_still_kept_stays_past_its_history(
        store_target: StoreTarget) -> None:
    """History shorter than the offer window: emails past keep_history go, except those
    whose offers the window still keeps (their papers are still in the feeds), which name
    them."""
    short = Retention(offer_days=21, history_days=10)
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
        # Day 30: offers of papers last in a feed before day 9 go (bob's, days 1-8), and
        # then their emails, all older than day 20; the others' offers still name theirs.
        done = prune(ledger, short, day(30))
        assert (done.offers, done.deliveries) == (9, 9)
        assert [r.message_id for r in ledger.history()] == [
            "<lasting@x>", *(f"<{n}@x>" for n in range(9, 16))]
        assert ledger.offer_log("ada@x.org") == {"2506.00001": (day(0).isoformat(), True)}
        assert ledger.offered_ids("bob@x.org") == frozenset()
