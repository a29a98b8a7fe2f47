"""Stopping: SIGTERM or SIGINT to `run` or `serve` takes no new message, lets each connection
finish the one on the wire, leaves the rest pending and exits 0 within the SMTP timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENV, SmtpServer, base_config, local_smtp, toml_text
from digest_mailer.store import Ledger

TIMEOUT = 5  # [delivery.smtp] timeout: the README's bound is this plus a few seconds


def slow_config(tmp_path: Path, smtp: SmtpServer, **schedule: str) -> Path:
    smtp.handler.data_delay = 0.4
    doc = base_config(tmp_path, smtp=local_smtp(smtp.port, connections=2, timeout=TIMEOUT),
                      subscribers=[{"email": f"r{n:02d}@example.org"} for n in range(40)])
    if schedule:
        doc["schedule"] = schedule
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    return path


def wait_for(condition: object, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def check_left_pending(tmp_path: Path, smtp: SmtpServer) -> None:
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        entries = ledger.outbox.open_entries()
        sent = {d.message_id for d in ledger.deliveries()}
        assert ledger.runs()[-1].outcome == "stopped"
    assert entries, "everything was sent: the stop came too late to test anything"
    assert {e.state for e in entries} == {"pending"}  # none left "sending"
    got = [r.message["Message-ID"] for r in smtp.handler.received]
    # Each message on the wire was finished and recorded; nothing else went out.
    assert set(got) == sent and len(got) == len(sent) < 40


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_run_leaves_the_rest_pending_and_exits_0(
        tmp_path: Path, smtp_server: SmtpServer, sig: signal.Signals) -> None:
    path = slow_config(tmp_path, smtp_server)
    proc = subprocess.Popen([sys.executable, "-m", "digest_mailer", "run", "--config",
                             str(path), "--date", "2025-06-02"], env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(smtp_server.handler.received) >= 2)
        signalled = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT + 10)
        took = time.monotonic() - signalled
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert took < TIMEOUT + 5, took
    assert "Stopped: the run was asked to stop" in out and "Traceback" not in err
    check_left_pending(tmp_path, smtp_server)


def test_sigterm_to_serve_mid_run_stops_within_the_bound(tmp_path: Path,
                                                         smtp_server: SmtpServer) -> None:
    path = slow_config(tmp_path, smtp_server, cron="0 7 * * *")
    proc = subprocess.Popen([sys.executable, "-m", "digest_mailer", "serve", "--once-now",
                             "--config", str(path)], env={**os.environ, **ENV},
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(smtp_server.handler.received) >= 2)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT + 10)
        took = time.monotonic() - signalled
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert took < TIMEOUT + 5, took
    assert "Traceback" not in err
    check_left_pending(tmp_path, smtp_server)


def test_serve_with_an_invalid_config_says_one_thing(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path)) + "\n[[subscribers]]\nemail = 'broken@'\n")
    proc = subprocess.run([sys.executable, "-m", "digest_mailer", "serve", "--config",
                           str(path)], env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "keeps serving" not in proc.stderr and "skipped" not in proc.stderr
    assert "Error: " in proc.stderr and "'broken@' is not an email address" in proc.stderr
