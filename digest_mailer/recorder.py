"""A sender's fate commits for accepted messages, in a thread of their own with their own
connection to the ledger. SQLite commits without holding the GIL, so the commit of one message
runs while the sender checks and splices the next and its connection sends the one after:
a sender's three costs overlap instead of adding up.

The crash promise is unchanged: each message's fate is still one commit, and the sender hands
a message to its connection only once the fate of the one two before it is committed (as it
did when it committed between sends), so at most one accepted message per connection is
unrecorded at any moment besides the one on the wire."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.outbox import Entry


class Recorder:
    def __init__(self, where: StoreTarget | Path, run_id: int | None) -> None:
        self._where, self._run_id = where, run_id
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record")
        self._pending: Future[None] | None = None
        self._ledger: Ledger | None = None  # opened, used and closed in the thread only

    def sent(self, entry: Entry, when: datetime, subject: str) -> None:
        """Commits this message as sent, in the background; the one before must be settled."""
        assert self._pending is None, "settle() the last commit first"
        self._pending = self._thread.submit(self._sent, entry, when, subject)

    def _sent(self, entry: Entry, when: datetime, subject: str) -> None:
        if self._ledger is None:
            self._ledger = Ledger.open(self._where)
        self._ledger.outbox.sent(entry.id, when, self._run_id, subject=subject, entry=entry)

    def settle(self) -> None:
        """Waits for the last commit; raises what it raised (a full disk, a damaged ledger)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.settle()
        finally:
            self._thread.submit(self._close).result()
            self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
