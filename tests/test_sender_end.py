"""When a run's sender ends: once the composer has said it is done AND the queue was empty
after that. The two looks race with the composer's last commit; the order of the looks
decides whether a message can be left behind."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conftest import ENV, SmtpServer, config_for, go
from digest_mailer import dispatch
from digest_mailer.config import load_config
from digest_mailer.dispatch import Sender
from digest_mailer.errors import StoreError
from digest_mailer.models import Status
from digest_mailer.senders import sender_tag
from digest_mailer.worker import worker_spec


class ComposerFinishesNow:
    """The run's "composed" flag, at the worst moment: the composer commits its last rows
    and sets the flag just as the sender first looks at it."""

    def __init__(self, ledger: Path, run_id: int) -> None:
        self.ledger, self.run_id, self.done = ledger, run_id, False

    def is_set(self) -> bool:
        if not self.done:
            conn = sqlite3.connect(self.ledger)
            with conn:
                conn.execute("UPDATE outbox SET owner_run = ? WHERE owner_run = ?",
                             (self.run_id, -self.run_id))
            conn.close()
            self.done = True
        return True

    def set(self) -> None:
        self.done = True


def test_rows_committed_just_before_the_composer_is_done_are_sent(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    """CI, twice: a run with one in-process sender left 2 of 3 messages pending, without a
    cause. The sender found the queue empty, the composer then committed and said it was
    done, and the sender, looking at the flag only after the queue, stopped."""
    path = config_for(tmp_path, smtp_server)
    composed = go(path, compose_only=True)
    assert [o.status for o in composed.outcomes].count(Status.PENDING) == 2
    ledger = tmp_path / "state.sqlite3"
    conn = sqlite3.connect(ledger)
    with conn:  # not yet committed, as far as the sender can tell
        (run_id,) = conn.execute("SELECT max(owner_run) FROM outbox").fetchone()
        conn.execute("UPDATE outbox SET owner_run = ? WHERE owner_run = ?", (-run_id, run_id))
    conn.close()
    spec = replace(worker_spec(load_config(path), ENV), worker=False, run_id=run_id)
    sender = Sender(spec, f"{sender_tag(spec)}t0", threading.Event(),
                    ComposerFinishesNow(ledger, run_id))
    sender.run()
    assert len(smtp_server.handler.received) == 2
    conn = sqlite3.connect(ledger)
    states = [s for (s,) in conn.execute("SELECT state FROM outbox")]
    conn.close()
    assert states == ["sent", "sent"], states


def test_a_sender_process_that_cannot_start_is_reported_and_the_wait_ends(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    """Processes are started from a thread, so the run composes while they import: a start
    that fails there must still count as a sender that died, not as one starting for ever."""
    import time

    from digest_mailer.senders import Senders
    from digest_mailer.store import Ledger

    path = config_for(tmp_path, smtp_server)
    spec = replace(worker_spec(load_config(path), ENV), worker=False, run_id=1,
                   roster=lambda: None)  # type: ignore[arg-type]  # cannot be pickled
    senders = Senders(spec, 1)
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        deadline = time.monotonic() + 30
        while senders.check(ledger) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert senders.check(ledger) == 0
        senders.wait(ledger, lambda: False)
    assert len(senders.died) == 1 and "exit" not in senders.died[0], senders.died


def test_senders_started_before_a_run_that_fails_are_gone_when_it_returns(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    """A run's sender processes start before the feed is read, to import meanwhile; a feed
    that cannot be read ends the run before they begin, and none of them outlives it."""
    import fcntl
    import multiprocessing

    import pytest

    from conftest import base_config, local_smtp, toml_text
    from digest_mailer.errors import DigestMailerError
    from digest_mailer.lock import senders_lock_path

    broken = tmp_path / "feed.json"
    broken.write_text("{ not json")
    path = tmp_path / "digest-mailer.toml"
    path.write_text(toml_text(base_config(tmp_path, source=broken,
                                          smtp=local_smtp(smtp_server.port, connections=2))))
    with pytest.raises(DigestMailerError):
        go(path)
    assert multiprocessing.active_children() == []
    with open(senders_lock_path(str(tmp_path / "state.sqlite3")), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no sender holds it
    conn = sqlite3.connect(tmp_path / "state.sqlite3")
    assert conn.execute("SELECT outcome FROM runs").fetchall() == [("source failed",)]
    conn.close()
    assert smtp_server.handler.received == []


def test_a_run_whose_output_is_closed_ends_well(tmp_path: Path,
                                                smtp_server: SmtpServer) -> None:
    """A sender process leaves without the interpreter's teardown, flushing its output first:
    output that is closed (a daemon started with `>&-`) must not make it exit in error, which
    recorded the whole run as crashed."""
    import os
    import subprocess
    import sys

    from conftest import base_config, local_smtp, toml_text

    path = tmp_path / "digest-mailer.toml"
    path.write_text(toml_text(base_config(tmp_path,
                                          smtp=local_smtp(smtp_server.port, connections=1))))
    command = [sys.executable, "-m", "digest_mailer", "run", "--config", str(path),
               "--date", "2025-06-02"]
    done = subprocess.run(["sh", "-c", '"$@" 1>&-', "sh", *command], env={**os.environ, **ENV},
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(tmp_path / "state.sqlite3")
    assert conn.execute("SELECT outcome FROM runs").fetchall() == [("ok",)], done.stderr
    conn.close()
    assert len(smtp_server.handler.received) == 2


def test_a_ledger_that_fails_while_a_message_is_built_fails_no_message(
        tmp_path: Path, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    """CI, once: PostgreSQL shut down while a worker read a digest's template, and the worker
    printed a traceback as for a message that cannot be built. The ledger's trouble is not
    the message's: a message whose template cannot be read for it is not failed for good
    (nothing retries a failed message), the sender stops with the store's one-line error,
    and the rows wait for the next sender."""
    path = config_for(tmp_path, smtp_server)
    composed = go(path, compose_only=True)
    assert [o.status for o in composed.outcomes].count(Status.PENDING) == 2
    ledger = tmp_path / "state.sqlite3"
    conn = sqlite3.connect(ledger)
    with conn:  # what a sender reads to build each message is gone (a store that fails)
        (run_id,) = conn.execute("SELECT max(owner_run) FROM outbox").fetchone()
        conn.execute("DROP TABLE outbox_sets")
    conn.close()
    spec = replace(worker_spec(load_config(path), ENV), worker=False, run_id=run_id)
    composed = threading.Event()
    composed.set()  # the sender ends once the queue is empty
    sender = Sender(spec, f"{sender_tag(spec)}t0", threading.Event(), composed)
    with pytest.raises(StoreError, match="outbox_sets"):
        sender.run()
    assert smtp_server.handler.received == []
    assert "cannot build the message" not in caplog.text
    conn = sqlite3.connect(ledger)
    states = [s for (s,) in conn.execute("SELECT state FROM outbox")]
    conn.close()
    assert sorted(states) == ["pending", "pending"]


def test_a_ledger_that_fails_behind_a_message_on_the_wire_records_that_message_first(
        tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next message is built while the server takes the one before: when the ledger
    fails then, the message on the wire still gets its verdict read and recorded before the
    sender stops, so it is not sent again under its Message-ID (review)."""
    path = config_for(tmp_path, smtp_server)
    composed = go(path, compose_only=True)
    assert [o.status for o in composed.outcomes].count(Status.PENDING) == 2
    ledger = tmp_path / "state.sqlite3"
    conn = sqlite3.connect(ledger)
    (run_id,) = conn.execute("SELECT max(owner_run) FROM outbox").fetchone()
    conn.close()
    built = dispatch._Templates.message

    def then_the_ledger_fails(self: Any, entry: Any, want_html: bool) -> Any:
        if entry.recipient != "ada@example.org":
            with contextlib.closing(sqlite3.connect(ledger)) as c, c:
                c.execute("DROP TABLE outbox_sets")
        return built(self, entry, want_html)

    monkeypatch.setattr(dispatch._Templates, "message", then_the_ledger_fails)
    spec = replace(worker_spec(load_config(path), ENV), worker=False, run_id=run_id)
    done = threading.Event()
    done.set()
    sender = Sender(spec, f"{sender_tag(spec)}t0", threading.Event(), done)
    with pytest.raises(StoreError, match="outbox_sets"):
        sender.run()
    assert [m.rcpt_tos for m in smtp_server.handler.received] == [["ada@example.org"]]
    with contextlib.closing(sqlite3.connect(ledger)) as c:
        states = dict(c.execute("SELECT recipient, state FROM outbox").fetchall())
        sent = [r for (r,) in c.execute("SELECT subscriber FROM deliveries")]
    assert states == {"ada@example.org": "sent", "grace@example.org": "pending"}
    assert sent == ["ada@example.org"]
