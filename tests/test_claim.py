"""A sender's claim: the first due row and the due rows of its digest after it, whatever way
they are due (waiting, retried, a lease run out), read by index, never by reading the queue."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import sqlite

from conftest import NOW
from digest_mailer.models import MessageState
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store import outbox as box
from digest_mailer.store.outbox import Entry, Queued

T = NOW.timestamp()


def queued(n: int, set_id: int) -> Queued:
    return Queued(set_id=set_id, recipient=f"r{n}@example.org", name="", unsubscribe_url="u",
                  token="t", message_id=f"<m{n}@example.org>", subject="",
                  envelope_from="papers@example.org", included=("1",), offered=("1",))


@pytest.mark.parametrize("worker", [False, True], ids=["run", "send worker"])
def test_a_claim_takes_the_first_due_row_and_its_digests_rows_after_it(
        store_target: StoreTarget, worker: bool) -> None:
    with Ledger.open(store_target) as ledger:
        run = ledger.start_run(NOW, date(2025, 6, 2), "x")
        a, b = ledger.outbox.add_set(b"a", NOW), ledger.outbox.add_set(b"b", NOW)
        # ids 1-8 alternate between the two digests
        ledger.outbox.add_many([queued(n, a if n % 2 else b) for n in range(1, 9)],
                               run_id=run, now=NOW)
        ids = sorted(ledger.outbox.fates(run))
        assert len(ids) == 8

        def claim(limit: int, t: float) -> list[Entry]:
            return ledger.outbox.claim(None if worker else run, "s", limit, t, lease=60)

        first = claim(3, T)
        assert [e.recipient for e in first] == ["r1@example.org", "r3@example.org",
                                                "r5@example.org"]
        # r1 refused for now, due again in 100 s; r3 and r5 stay in hand past their lease
        ledger.outbox.deferred(first[0].id, NOW, "451 later", next_try=T + 100)
        second = claim(8, T)
        assert [e.recipient for e in second] == ["r2@example.org", "r4@example.org",
                                                 "r6@example.org", "r8@example.org"]
        assert [e.recipient for e in claim(8, T)] == ["r7@example.org"]
        assert claim(8, T) == []
        # 200 s later: r1 is due again and every lease has run out (60 s)
        later = claim(8, T + 200)
        assert [e.recipient for e in later] == ["r1@example.org", "r3@example.org",
                                                "r5@example.org", "r7@example.org"]
        assert later[0].state == MessageState.DEFERRED and later[0].attempts == 1


def test_the_claim_reads_index_ranges_not_the_queue(tmp_path: Path) -> None:
    """On today's main the claim sorted every due row of the run twice (a `send` worker's:
    read every row of the outbox, sent ones included): quadratic in the queue."""
    path = tmp_path / "state.sqlite3"
    with Ledger.open(path):
        pass
    conn = sqlite3.connect(path)
    for name in ("_FIRST", "_CLAIM", "_FIRST_ANY", "_CLAIM_ANY"):
        compiled = getattr(box, name).compile(dialect=sqlite.dialect())
        sql = str(compiled).replace("__[POSTCOMPILE_state_1]", "'pending', 'deferred'")
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql,
                                               [1] * sql.count("?"))]
        reads = [step for step in plan if step.startswith(("SCAN outbox", "SEARCH outbox"))]
        # an index read (a scan of the pending rows' index stops at its LIMIT), never the table
        assert reads and all(" USING INDEX " in step or " USING COVERING INDEX " in step
                             for step in reads), (name, plan)
        # the only sorts allowed: the merge of the probes' single rows
        assert all("TEMP B-TREE" not in step for step in plan) or name.startswith("_FIRST"), \
            (name, plan)


def test_a_batch_stores_the_templates_its_rows_need_with_them(
        store_target: StoreTarget) -> None:
    """The composer's templates go in with the first batch of rows that needs them (one
    commit, not one per digest): the rows carry the stored ids, a template stored before
    keeps its id, and a row naming a template nobody gave is refused with nothing written."""
    with Ledger.open(store_target) as ledger:
        run = ledger.start_run(NOW, date(2025, 6, 2), "x")
        old = ledger.outbox.add_set(b"old", NOW)
        ids = ledger.outbox.add_many([queued(1, -1), queued(2, old), queued(3, -2),
                                      queued(4, -1)], run_id=run, now=NOW,
                                     sets={-1: b"first", -2: b"second"})
        assert sorted(ids) == [-2, -1] and len(set(ids.values()) | {old}) == 3
        assert ledger.outbox.load_set(ids[-1]) == b"first"
        assert ledger.outbox.load_set(ids[-2]) == b"second"
        by_rcpt = {e.recipient: e.set_id for e in ledger.outbox.open_entries()}
        assert by_rcpt == {"r1@example.org": ids[-1], "r2@example.org": old,
                           "r3@example.org": ids[-2], "r4@example.org": ids[-1]}
        with pytest.raises(ValueError, match="-3"):
            ledger.outbox.add_many([queued(5, -3)], run_id=run, now=NOW,
                                   sets={-4: b"other"})
        assert len(ledger.outbox.open_entries()) == 4
        assert ledger.conn.execute(text("SELECT count(*) FROM outbox_sets")).scalar() == 3


def test_a_claim_takes_its_rows_by_key_on_the_lean_path(store_target: StoreTarget) -> None:
    """The rows a claim takes are marked by one statement of one shape whatever their number
    (their ids as one parameter), which Db.hot runs without SQLAlchemy's execution (an
    expanding IN list went through it at every claim: 7% of a sender's time); on SQLite it
    finds them by key."""
    with Ledger.open(store_target) as ledger:
        run = ledger.start_run(NOW, date(2025, 6, 2), "x")
        s = ledger.outbox.add_set(b"a", NOW)
        ledger.outbox.add_many([queued(n, s) for n in range(1, 6)], run_id=run, now=NOW)
        for limit in (2, 3):
            taken = ledger.outbox.claim(run, "s", limit, T, lease=60)
            assert len(taken) == limit
        assert ledger.conn._compiled(box._TAKE[ledger.conn.dialect], {
            "ids": "[]", "by": "s", "until": 0.0}) is not None  # not the slow path
        states = [e.state for e in ledger.outbox.open_entries()]
        assert states.count(MessageState.SENDING) == 5
        if ledger.conn.dialect == "sqlite":
            sql = str(box._TAKE["sqlite"].compile(dialect=sqlite.dialect()))
            plan = [row[3] for row in ledger.conn.raw.execute(
                "EXPLAIN QUERY PLAN " + sql, ["[1, 2]"] + [1] * (sql.count("?") - 1))]
            assert any("SEARCH outbox USING INTEGER PRIMARY KEY" in step for step in plan), plan
