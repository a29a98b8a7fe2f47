"""The daemon: retries, config reloads, catch-up on start; and one real `serve` process."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import ENV, SmtpServer, base_config, local_smtp, toml_text, waiting_garbage
from digest_mailer.config import Config
from digest_mailer.errors import SourceError
from digest_mailer.heap import settled
from digest_mailer.models import RunReport
from digest_mailer.scheduler import Daemon
from digest_mailer.store import Ledger

NOW = datetime(2025, 6, 2, 7, 20, tzinfo=UTC)


def report(fetched: int) -> RunReport:
    return RunReport(run_date=date(2025, 6, 2), started_at=NOW, finished_at=NOW, origin="x",
                     fetched=fetched, skipped=0, skipped_reasons=())


def write(tmp_path: Path, **schedule: Any) -> Path:
    doc = base_config(tmp_path)
    doc["schedule"] = {"cron": "0 7 * * *", "source_attempts": 3, "source_retry_delay": 0.01,
                       **schedule}
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    return path


class Runs:
    """A stand-in for the pipeline that answers from a script: a report or an exception."""

    def __init__(self, *answers: RunReport | Exception) -> None:
        self.answers = list(answers)
        self.configs: list[Config] = []

    def __call__(self, config: Config, stop: threading.Event) -> RunReport:
        self.configs.append(config)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def daemon(path: Path, runs: Runs, now: datetime = NOW) -> Daemon:
    return Daemon(config_path=path, run=runs, now=lambda: now,
                  stop=threading.Event())


def test_a_source_that_is_down_is_retried_then_works(tmp_path: Path) -> None:
    runs = Runs(SourceError("down"), SourceError("down"), report(5))
    assert daemon(write(tmp_path), runs).job() == report(5)
    assert len(runs.configs) == 3


def test_an_empty_source_is_retried_and_then_given_up(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    runs = Runs(SourceError("down"), report(0), SourceError("still down"))
    with caplog.at_level(logging.WARNING):
        assert daemon(write(tmp_path), runs).job() is None
    assert "the source has no papers; trying again" in caplog.text
    assert "source: still down; giving up until the next scheduled run" in caplog.text


def test_an_unexpected_error_fails_that_run_alone(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A defect inside one run (an Alembic race killed a `serve` this way) is logged with its
    traceback and the schedule goes on, as the job promises."""
    runs = Runs(KeyError("script"), report(3))
    d = daemon(write(tmp_path), runs)
    with caplog.at_level(logging.ERROR):
        assert d.job() is None
    assert "run failed unexpectedly: KeyError" in caplog.text and "Traceback" in caplog.text
    assert d.job() == report(3)


def test_the_config_is_read_afresh_and_a_broken_one_skips_only_that_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path)
    runs = Runs(report(1), report(1))
    d = daemon(path, runs)
    d.job()
    text = path.read_text()
    path.write_text(text + "\n[[subscribers]]\nemail = 'broken@'\n")
    with caplog.at_level(logging.ERROR):
        assert d.job() is None
    assert "subscribers[3].email: 'broken@' is not an email address" in caplog.text
    path.write_text(text + "\n[[subscribers]]\nemail = 'new@example.org'\n")
    d.job()
    assert [len(c.subscribers_view()) for c in runs.configs] == [3, 4]


def test_catch_up_runs_once_when_the_last_fire_was_missed(tmp_path: Path) -> None:
    runs = Runs(report(1))
    d = daemon(write(tmp_path, misfire_grace="1h"), runs)
    d.stop.set()  # serve returns right after its start-up work
    d.serve()
    assert len(runs.configs) == 1


def test_no_catch_up_past_the_grace_or_after_a_run(tmp_path: Path) -> None:
    late = Runs()
    d = daemon(write(tmp_path, misfire_grace="10m"), late)
    d.stop.set()
    d.serve()  # 07:20 is 20 minutes after 07:00: past a 10 minute grace
    assert late.configs == []
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:  # a run at 07:05 already happened
        ledger.start_run(datetime(2025, 6, 2, 7, 5, tzinfo=UTC), date(2025, 6, 2), "x")
    done = Runs()
    d = daemon(write(tmp_path, misfire_grace="1h"), done)
    d.stop.set()
    d.serve()
    assert done.configs == []


def test_serve_process_sends_once_and_stops_cleanly_on_sigterm(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    doc = base_config(tmp_path, smtp=local_smtp(smtp_server.port))
    doc["schedule"] = {"cron": "* * * * * *"}  # every second
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    proc = subprocess.Popen([sys.executable, "-m", "digest_mailer", "serve", "--config",
                             str(path)], env={**os.environ, **ENV}, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
                if len([r for r in ledger.runs() if r.finished_at]) >= 3:
                    break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "next run" in stderr and "stopped" in stderr and "Traceback" not in stderr
    received = [r.rcpt_tos[0] for r in smtp_server.handler.received]
    assert sorted(received) == ["ada@example.org", "grace@example.org"]  # each once
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        assert len(ledger.runs()) >= 3


def test_garbage_waiting_when_a_scheduled_run_begins_is_freed_after_it(
        tmp_path: Path) -> None:
    """A run freezes what exists when it begins (heap.settled), garbage included; `serve`
    collects after each run, or that garbage would outlive every later run (review: an idle
    process may reach no full collection before its next run freezes it again)."""
    def run(config: Config, stop: threading.Event) -> RunReport:
        with settled():
            return report(5)

    gc.disable()  # only the collections the code asks for
    try:
        gone = waiting_garbage()
        assert daemon(write(tmp_path), run).job() == report(5)  # type: ignore[arg-type]
        assert gone == [True]
    finally:
        gc.enable()
