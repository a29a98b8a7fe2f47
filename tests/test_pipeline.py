"""Whole runs: a real SQLite ledger, a real SMTP server on 127.0.0.1, the sample feed."""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    ENV,
    NOW,
    SmtpServer,
    base_config,
    capture,
    config_for,
    go,
    local_smtp,
    statuses,
    toml_text,
    waiting_garbage,
)
from digest_mailer.config import load_config
from digest_mailer.errors import DigestMailerError, SourceError
from digest_mailer.models import RunReport, Status
from digest_mailer.pipeline import RunOptions, run
from digest_mailer.store import Ledger


def test_first_run_sends_matches_and_second_run_sends_nothing(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = config_for(tmp_path, smtp_server)
    first = go(path)
    assert statuses(first) == {"ada@example.org": Status.SENT,
                               "grace@example.org": Status.SENT,
                               "edsger@example.org": Status.NO_MATCH}
    assert first.fetched == 7 and first.skipped == 1
    handler = smtp_server.handler
    assert [r.rcpt_tos for r in handler.received] == [["ada@example.org"],
                                                     ["grace@example.org"]]
    assert handler.received[0].mail_from == "papers@example.org"
    assert len(handler.sessions) == 1  # one connection for the whole run
    ada = handler.to("ada@example.org")[0].message
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        (record,) = ledger.deliveries("ada@example.org")
        assert record.message_id == ada["Message-ID"]
        assert ledger.sent_papers(record.message_id) == ["2506.00101", "2506.00103"]
        assert ledger.runs()[0].outcome == "ok"

    second = go(path)
    assert statuses(second) == {"ada@example.org": Status.NOTHING_NEW,
                                "grace@example.org": Status.NOTHING_NEW,
                                "edsger@example.org": Status.NO_MATCH}
    assert len(handler.received) == 2


def test_new_subscriber_gets_what_is_current_and_changed_topics_get_new_matches(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = config_for(tmp_path, smtp_server)
    go(path)
    doc = base_config(tmp_path, smtp=local_smtp(smtp_server.port))
    doc["subscribers"][0]["topics"] = ["diffusion", "speech recognition"]  # ada widens
    doc["subscribers"].append({"email": "new@example.org", "authors": ["Yejin Choi"]})
    path.write_text(toml_text(doc))
    report = go(path)
    assert statuses(report)["new@example.org"] is Status.SENT
    assert statuses(report)["grace@example.org"] is Status.NOTHING_NEW
    ada = smtp_server.handler.to("ada@example.org")
    assert len(ada) == 2
    text = ada[1].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Multilingual Speech Recognition" in text and "Flow Matching" not in text
    new = smtp_server.handler.to("new@example.org")[0].message
    assert "2 new papers" in new["Subject"] and "by Yejin Choi" in new["Subject"]


def test_papers_over_the_cap_are_offered_and_not_sent_later(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = config_for(tmp_path, smtp_server,
                      subscribers=[{"email": "alan@example.org", "max_papers": 2}])
    first = go(path)
    assert first.outcomes[0].papers == 2 and "5 more over the cap" in first.outcomes[0].detail
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        assert len(ledger.offered_ids("alan@example.org")) == 7
    assert statuses(go(path)) == {"alan@example.org": Status.NOTHING_NEW}


def test_yesterdays_papers_never_crowd_out_todays(tmp_path: Path,
                                                  smtp_server: SmtpServer) -> None:
    day1 = json.loads(capture("hf_daily_papers_2025-06-02.json").read_text())
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps(day1[:10]))
    path = config_for(tmp_path, smtp_server, source=feed,
                      subscribers=[{"email": "alan@example.org", "max_papers": 3}])
    go(path)
    # The next day's window still holds yesterday's (highly upvoted) papers plus new ones.
    feed.write_text(json.dumps(day1))
    go(path)
    second = smtp_server.handler.to("alan@example.org")[1].message
    ids = {item["paper"]["id"] for item in day1[10:]}
    body = second.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    sent = [i for i in ids if i in body]
    assert len(sent) == 3
    assert not any(item["paper"]["id"] in body for item in day1[:10])


def test_dry_run_never_writes_the_ledger(tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = config_for(tmp_path, smtp_server)
    state = tmp_path / "state.sqlite3"
    report = go(path, dry_run=True)
    assert report.dry_run and report.delivered == 2 and not state.exists()
    assert smtp_server.handler.received == []
    go(path)  # a real run creates it
    before = hashlib.sha256(state.read_bytes()).hexdigest()
    dry = go(path, dry_run=True)
    assert statuses(dry)["ada@example.org"] is Status.NOTHING_NEW
    assert hashlib.sha256(state.read_bytes()).hexdigest() == before


def test_a_refused_recipient_is_not_recorded_and_the_run_goes_on(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    smtp_server.handler.refuse["ada@example.org"] = "550 5.1.1 No such user"
    path = config_for(tmp_path, smtp_server)
    report = go(path)
    assert statuses(report)["ada@example.org"] is Status.FAILED
    assert "550 5.1.1 No such user" in report.outcomes[0].detail
    assert statuses(report)["grace@example.org"] is Status.SENT
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        assert ledger.offered_ids("ada@example.org") == frozenset()
        assert ledger.runs()[-1].outcome == "failures"
    del smtp_server.handler.refuse["ada@example.org"]
    assert statuses(go(path))["ada@example.org"] is Status.SENT  # sent next time


def test_a_server_that_is_down_leaves_everything_pending_and_says_why_once(
        tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    from conftest import SmtpHandler, free_port
    from digest_mailer.report import report_lines

    port = free_port()
    subscribers = [{"email": f"s{i}@example.org"} for i in range(3)]
    subscribers.append({"email": "none@example.org", "topics": ["no such topic at all"]})
    lines = []
    for attempt in ("a", "b"):  # identical runs give identical reports
        folder = tmp_path / attempt
        folder.mkdir()
        doc = base_config(folder, smtp=local_smtp(port, connections=2), subscribers=subscribers)
        doc["delivery"].update({"retry_attempts": 1, "retry_delay": 0.05})
        path = folder / "c.toml"
        path.write_text(toml_text(doc))
        report = run(load_config(path), RunOptions(run_date=NOW.date()), now=NOW, env=ENV)
        assert [o.status for o in report.outcomes] == [Status.PENDING] * 3 + [Status.NO_MATCH]
        assert report.stopped and "cannot connect" in report.stopped
        assert report.failed == 3 and report.state == "blocked"
        lines.append([line.replace(str(folder), "X") for line in report_lines(report)])
    assert lines[0] == lines[1]
    text = "\n".join(lines[0])
    assert text.count("Connection refused") == 1, text
    with Ledger.open(tmp_path / "b" / "state.sqlite3") as ledger:
        assert ledger.deliveries() == []
        assert ledger.runs()[-1].outcome == "blocked"
        waiting = ledger.outbox.open_entries()
    assert [e.recipient for e in waiting] == [f"s{i}@example.org" for i in range(3)]
    assert {e.state for e in waiting} == {"pending"} and {e.attempts for e in waiting} == {0}
    # The server is back: the next run sends the ones left over, as the same messages.
    handler = SmtpHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        again = run(load_config(tmp_path / "b" / "c.toml"), RunOptions(run_date=NOW.date()),
                    now=NOW, env=ENV)
    finally:
        controller.stop()
    assert [o.status for o in again.outcomes][:3] == [Status.SENT] * 3
    assert sorted(r.message["Message-ID"] for r in handler.received) == \
        sorted(e.message_id for e in waiting)
    assert [o.status for o in again.outcomes][3:] == [Status.NOTHING_NEW] * 3 + [
        Status.NO_MATCH]


def test_a_source_that_fails_sends_nothing_and_is_recorded(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    bad = tmp_path / "feed.json"
    bad.write_text("{broken")
    path = config_for(tmp_path, smtp_server, source=bad)
    with pytest.raises(SourceError, match="not valid JSON"):
        go(path)
    assert smtp_server.handler.received == []
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        assert ledger.runs()[-1].outcome == "source failed"


def test_real_runs_need_the_unsubscribe_secret(tmp_path: Path,
                                               smtp_server: SmtpServer) -> None:
    path = config_for(tmp_path, smtp_server)
    with pytest.raises(DigestMailerError, match=r"\$DIGEST_UNSUBSCRIBE_SECRET is not set"):
        run(load_config(path), RunOptions(), now=NOW, env={})
    with pytest.raises(DigestMailerError, match="too short"):
        run(load_config(path), RunOptions(), now=NOW, env={"DIGEST_UNSUBSCRIBE_SECRET": "x"})
    assert smtp_server.handler.received == []


def test_preview_of_one_subscriber_ignoring_the_ledger(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = config_for(tmp_path, smtp_server)
    go(path)
    report = go(path, dry_run=True, only="GRACE@example.org", ignore_ledger=True,
                out_dir=tmp_path / "pv")
    assert statuses(report) == {"grace@example.org": Status.WRITTEN}
    assert (tmp_path / "pv" / "2025-06-02" / "grace_at_example.org.html").exists()
    with pytest.raises(DigestMailerError, match="not a subscriber"):
        go(path, dry_run=True, only="nobody@example.org")


def test_file_backend_writes_eml_html_and_an_index(tmp_path: Path,
                                                   write_config: Callable[..., Path]) -> None:
    path = write_config()
    report = go(path, dry_run=True)
    folder = tmp_path / "out" / "2025-06-02"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ada_at_example.org.eml", "ada_at_example.org.html", "grace_at_example.org.eml",
        "grace_at_example.org.html", "index.html"]
    index = (folder / "index.html").read_text()
    assert 'href="ada_at_example.org.html"' in index and "Daily Papers: 2 new papers" in index
    assert replace(report, outcomes=()).dry_run


def test_paused_and_weekly_subscribers(tmp_path: Path, http_server: Any,
                                       smtp_server: SmtpServer) -> None:
    days = {f"2025-06-0{d}": [{"paper": {"id": f"2506.0000{d}", "title": f"Agents day {d}",
                                         "upvotes": d,
                                         "submittedOnDailyAt": f"2025-06-0{d}T08:00:00Z"}}]
            for d in range(1, 7)}
    http_server.routes["/api"] = lambda req: (
        200, {}, json.dumps(days.get(req.query["date"], []) if req.query["p"] == "0"
                            else []).encode())
    doc = base_config(tmp_path, smtp=local_smtp(smtp_server.port),
                      source=http_server.base + "/api", subscribers=[
                          {"email": "weekly@example.org", "topics": ["agents"],
                           "frequency": "weekly", "weekday": "fri"},
                          {"email": "paused@example.org", "pause": True},
                          {"email": "daily@example.org", "topics": ["agents"]}])
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    config = load_config(path)
    thursday = run(config, RunOptions(run_date=date(2025, 6, 5)), now=NOW, env=ENV)
    assert statuses(thursday) == {"weekly@example.org": Status.NOT_DUE,
                                  "paused@example.org": Status.PAUSED,
                                  "daily@example.org": Status.SENT}
    assert thursday.outcomes[0].detail == "weekly, next on fri"
    assert {r.query["date"] for r in http_server.requests} == {"2025-06-04", "2025-06-05"}
    http_server.requests.clear()
    friday = run(config, RunOptions(run_date=date(2025, 6, 6)), now=NOW, env=ENV)
    assert len({r.query["date"] for r in http_server.requests}) == 7  # the week
    assert statuses(friday)["weekly@example.org"] is Status.SENT
    weekly = smtp_server.handler.to("weekly@example.org")[0].message
    assert "6 new papers" in weekly["Subject"]
    assert smtp_server.handler.to("paused@example.org") == []
    daily = smtp_server.handler.to("daily@example.org")
    # Daily saw days 4-5 on Thursday; on Friday only what it was never offered.
    assert [m.message["Subject"] for m in daily] == [
        "Daily Papers: 2 new papers on agents", "Daily Papers: 4 new papers on agents"]


def test_a_second_process_cannot_run_while_one_runs(tmp_path: Path,
                                                    smtp_server: SmtpServer) -> None:
    import subprocess
    import sys
    import time

    from digest_mailer.lock import Busy

    path = config_for(tmp_path, smtp_server)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from digest_mailer.lock import run_lock\n"
         "with run_lock(Path(sys.argv[1]), 'test holder'):\n"
         "    print('held', flush=True); time.sleep(30)", str(tmp_path / "state.sqlite3")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        start = time.monotonic()
        with pytest.raises(Busy) as info:
            go(path)
        assert time.monotonic() - start < 5
        assert f"pid {holder.pid}" in info.value.message and "test holder" in info.value.message
        assert smtp_server.handler.received == []
        with pytest.raises(Busy):
            go(path, wait=0.5)
    finally:
        holder.kill()
        holder.wait()
    assert go(path).delivered == 2  # free again


def test_the_report_names_the_first_skipped_items_and_counts_the_rest() -> None:
    from datetime import date

    from digest_mailer.report import SHOWN_REASONS, report_lines

    reasons = tuple(f"feed item {i}: no arXiv id" for i in range(100))
    report = RunReport(run_date=date(2025, 6, 2), started_at=NOW, finished_at=NOW,
                       origin="feed", fetched=3, skipped=250, skipped_reasons=reasons)
    lines = report_lines(report)
    assert lines[1] == "Papers fetched: 3 from feed (250 item(s) skipped)"
    assert lines[2:2 + SHOWN_REASONS] == [f"  skipped: {r}" for r in reasons[:SHOWN_REASONS]]
    assert lines[2 + SHOWN_REASONS] == f"  ... and {250 - SHOWN_REASONS} more skipped"


def test_a_run_leaves_the_collector_as_it_found_it(tmp_path: Path,
                                                   smtp_server: SmtpServer) -> None:
    """A run keeps what existed when it began out of the collector's way (heap.settled), and
    gives it back when it ends, well or not: garbage that was waiting then (a `serve`
    process's previous config) is freed after the run, and nothing stays frozen."""
    path = config_for(tmp_path, smtp_server)
    gc.collect()
    frozen = gc.get_freeze_count()
    gone = waiting_garbage()
    assert statuses(go(path))["ada@example.org"] is Status.SENT
    assert gc.get_freeze_count() == frozen
    gc.collect()
    assert gone == [True]

    gone = waiting_garbage()
    with pytest.raises(DigestMailerError):
        go(path, source=str(tmp_path / "no-such-feed.json"))
    assert gc.get_freeze_count() == frozen
    gc.collect()
    assert gone == [True]


def test_a_digest_whose_rows_span_batches_is_stored_once(
        tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A digest's template goes into the outbox with the first batch that needs it; the rows
    of later batches carry its stored id (batches of one and two rows here)."""
    from digest_mailer import pipeline
    from digest_mailer.store.outbox import Outbox

    monkeypatch.setattr(pipeline, "FIRST_BATCH", 1)
    monkeypatch.setattr(pipeline, "BATCH", 2)
    stored: list[int] = []
    add_many = Outbox.add_many

    def counting(self: Outbox, rows: Any, **kw: Any) -> dict[int, int]:
        stored.append(len(kw.get("sets") or {}))
        return add_many(self, rows, **kw)

    monkeypatch.setattr(Outbox, "add_many", counting)
    people = [{"email": f"r{n}@example.org", "name": f"R{n}", "topics": ["diffusion"]}
              for n in range(5)] + [{"email": "grace@example.org", "name": "Grace",
                                     "topics": ["speech recognition"]}]
    report = go(config_for(tmp_path, smtp_server, subscribers=people))
    assert set(statuses(report).values()) == {Status.SENT}
    assert sum(stored) == 2 and len(stored) >= 4  # two digests, each stored once
    assert len(smtp_server.handler.received) == 6
