"""A sender's hold on the rows it claimed: a lease it renews from a thread of its own while it
lives, so the rows of a sender that dies (its host included) go back to the queue when the lease
runs out, and those of a live one never do. And the server-trouble bookkeeping of a `send`
worker, which belongs to no run: its own, in memory (it has its own connections)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

from digest_mailer.errors import DigestMailerError
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.ledger import RunControl

logger = logging.getLogger(__name__)

RENEWALS = 3  # renewals per lease: two may fail (a slow ledger) before the rows are lost


def holder_dead(holder: str) -> bool:
    """Whether the claimer named `holder` (`host:pid:...`, as senders name themselves) is a
    process of this host that is gone. One on another host is never known dead: its lease
    says when its rows return."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseKeeper:
    """Renews `sender`'s lease every lease/RENEWALS seconds on a ledger connection of its own.
    `valid_until`: until when the rows it holds are surely still its own."""

    def __init__(self, where: StoreTarget, sender: str, lease: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._where, self._sender, self.lease, self._clock = where, sender, lease, clock
        self.valid_until = clock() + lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="lease", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        ledger: Ledger | None = None
        try:
            while not self._stop.wait(self.lease / RENEWALS):
                now = self._clock()
                try:
                    if ledger is None:
                        ledger = Ledger.open(self._where)
                    ledger.outbox.renew(self._sender, now + self.lease)
                    # Renewed too late (the process was frozen, the ledger slow): another
                    # sender may have taken the rows meanwhile, and the renewal then matched
                    # none of them. They stay lost until the sender claims afresh (claimed).
                    if self._clock() < self.valid_until:
                        self.valid_until = now + self.lease
                    else:
                        logger.warning("%s: the lease ran out before it was renewed",
                                       self._sender)
                except DigestMailerError as e:  # tried again at the next turn
                    logger.warning("%s: cannot renew the lease (%s)", self._sender, e)
                    if ledger is not None:
                        ledger.close()
                        ledger = None
        finally:
            if ledger is not None:
                ledger.close()

    def holds(self, margin: float = 0.0) -> bool:
        return self._clock() + margin < self.valid_until

    def claimed(self, at: float) -> None:
        """The sender, its hand empty, has just claimed rows until `at + lease`."""
        self.valid_until = at + self.lease

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class LocalControl:
    """RunControl for a `send` worker: server trouble counted by this sender alone."""

    def __init__(self) -> None:
        self._state = RunControl(0.0, 0, False, None)

    def run_control(self, run_id: int) -> RunControl:
        return self._state

    def server_trouble(self, run_id: int, cause: str, now: float, delays: Sequence[float],
                       *, fatal: bool = False) -> RunControl:
        hold, trouble, blocked, _ = self._state
        if not blocked and (fatal or hold <= now):
            trouble += 1
            blocked = fatal or trouble > len(delays)
            hold = now if blocked else now + delays[trouble - 1]
            self._state = RunControl(hold, trouble, blocked, cause)
        return self._state

    def server_fine(self, run_id: int) -> None:
        if not self._state.blocked:
            self._state = RunControl(self._state.hold_until, 0, False, None)
