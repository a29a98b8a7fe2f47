"""The senders' fate commits in a thread of their own: each lands as one commit, in order, on a
real SQLite ledger, and a commit that fails is raised to the sender, never dropped."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from digest_mailer.errors import StoreError
from digest_mailer.models import MessageState
from digest_mailer.recorder import Recorder
from digest_mailer.store import Ledger
from digest_mailer.store.outbox import Entry, Queued

NOW = datetime(2025, 6, 2, 7, tzinfo=UTC)


def queued(n: int, set_id: int) -> Queued:
    return Queued(set_id=set_id, recipient=f"r{n}@example.org", name="", unsubscribe_url="u",
                  token="t", message_id=f"<m{n}@example.org>", subject="",
                  envelope_from="papers@example.org", included=("2506.00001",),
                  offered=("2506.00001", "2506.00002"))


def test_each_accepted_message_is_committed_as_sent(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with Ledger.open(path) as ledger:
        run_id = ledger.start_run(NOW, date(2025, 6, 2), "test")
        set_id = ledger.outbox.add_set(b"{}", NOW)
        ledger.outbox.add_many([queued(n, set_id) for n in range(5)], run_id=run_id, now=NOW)
        claimed = ledger.outbox.claim(run_id, "s", 5, time.time(), lease=60)
        recorder = Recorder(str(path), run_id)
        try:
            for entry in claimed:
                recorder.settle()  # as the sender does before the next send
                recorder.sent(entry, NOW, f"subject {entry.id}")
        finally:
            recorder.close()  # settles the last one
        fates = ledger.outbox.fates(run_id)
    assert len(claimed) == 5
    assert {f.state for f in fates.values()} == {MessageState.SENT}
    assert all(f.papers == 1 for f in fates.values())


def test_a_failed_commit_is_raised_to_the_sender(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recorder = Recorder(str(blocker / "state.sqlite3"), run_id=1)
    entry = Entry(id=1, set_id=1, recipient="r@example.org", name="", unsubscribe_url="u",
                  token="t", message_id="<m@example.org>", subject="", envelope_from="p@x.org",
                  included=(), offered=(), state=MessageState.SENDING, attempts=0)
    recorder.sent(entry, NOW, "s")
    with pytest.raises(StoreError):
        recorder.settle()
    recorder.close()
