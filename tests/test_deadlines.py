"""Deadlines, not per-read timeouts: a hand-written server that drips, floods, goes silent or
turns a reconnect away must cost a bounded time, and the report and the outbox must agree."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

from badsmtp import (
    BadServer,
    bad_server,
    drip_greeting,
    endless_greeting,
    reconnect_refused,
)

from conftest import ENV, NOW, base_config, local_smtp, toml_text
from digest_mailer.config import load_config
from digest_mailer.models import RunReport, Status
from digest_mailer.pipeline import RunOptions, run
from digest_mailer.store import Ledger


def go(tmp_path: Path, server: BadServer, count: int = 3, **smtp: Any) -> RunReport:
    doc = base_config(tmp_path, smtp=local_smtp(server.port, **smtp),
                      subscribers=[{"email": f"r{n}@example.org"} for n in range(count)])
    doc["delivery"].update({"retry_attempts": 1, "retry_delay": 0.1})
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    return run(load_config(path), RunOptions(run_date=NOW.date()), now=NOW, env=ENV)


def agree(tmp_path: Path, report: RunReport) -> None:
    """Every report line says what the ledger says: a sent message is a delivery (its outbox
    row went at the run's end), any other waits or failed in the outbox."""
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        fates = ledger.outbox.fates(report.run_id or 0)
        delivered = {d.message_id for d in ledger.deliveries()}
    for o in report.outcomes:
        assert o.message_id
        if o.status is Status.SENT:
            assert o.message_id in delivered and o.message_id not in fates, o
        else:
            assert fates[o.message_id].state == o.status.value, (o, fates[o.message_id])


def test_a_dripping_greeting_is_cut_off_by_the_reply_deadline(tmp_path: Path) -> None:
    with bad_server(drip_greeting) as server:
        started = time.monotonic()
        report = go(tmp_path, server, timeout=2)
        took = time.monotonic() - started
    # Two tries (the first and one retry) of about 2 s each, then the rest waits: not 119 s.
    assert took < 15, took
    assert report.stopped and "no whole reply within 2s" in report.stopped
    assert [o.status for o in report.outcomes] == [Status.PENDING] * 3
    agree(tmp_path, report)


def test_an_endless_greeting_is_capped(tmp_path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with bad_server(endless_greeting) as server:
        started = time.monotonic()
        report = go(tmp_path, server, timeout=5, connections=0)  # in this process: RSS is ours
        took = time.monotonic() - started
    assert took < 15, took
    assert report.stopped and "more than 100 lines" in report.stopped
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KB
    assert [o.status for o in report.outcomes] == [Status.PENDING] * 3


def test_a_server_silent_after_data_is_given_up_on_together(tmp_path: Path) -> None:
    with bad_server(data_silence=lambda conn, n: True) as server:
        started = time.monotonic()
        report = go(tmp_path, server, count=6, timeout=1.5)
        took = time.monotonic() - started
    # Not 6 messages x 1.5 s x (retries + 1): two tries, then the other five wait together.
    assert took < 12, took
    assert report.stopped and "no whole reply" in report.stopped
    statuses = [o.status for o in report.outcomes]
    # The two messages that went out and met silence are deferred; the rest never went.
    assert statuses.count(Status.DEFERRED) == 2 and statuses.count(Status.PENDING) == 4
    agree(tmp_path, report)
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        assert ledger.runs()[-1].outcome == "blocked"
        assert {e.state for e in ledger.outbox.open_entries()} <= {"pending", "deferred"}


def test_a_421_greeting_on_reconnect_defers(tmp_path: Path) -> None:
    with bad_server(reconnect_refused) as server:
        report = go(tmp_path, server, count=4, timeout=5)
    statuses = [o.status for o in report.outcomes]
    assert statuses[0] is Status.SENT
    assert set(statuses[1:]) <= {Status.PENDING, Status.DEFERRED}
    assert report.stopped and "421 4.3.2 busy" in report.stopped
    assert report.state == "blocked"
    agree(tmp_path, report)
    assert [r for r, _ in server.received] == ["r0@example.org"]
