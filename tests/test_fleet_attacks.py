"""Attacks on send workers: a worker frozen past its lease and resumed, a run started while
workers hold rows, an unsubscribe while a worker holds a claimed batch, the PostgreSQL server
gone mid-run. Real SQLite/PostgreSQL, real aiosmtpd, real processes."""

from __future__ import annotations

import os
import socket
import time

from test_fleet import queue

from digest_mailer.lease import LeaseKeeper
from digest_mailer.store import Ledger, StoreTarget


def test_a_keeper_frozen_past_its_lease_does_not_take_the_rows_back(
        store_target: StoreTarget) -> None:
    """SIGSTOP then SIGCONT, as the process sees it: the wall clock jumps past the lease while
    another worker takes the rows; the keeper's next renewal (which matches none of them) must
    not make the sender believe it still holds them."""
    lease = 0.6
    clock = [time.time()]
    name = f"{socket.gethostname()}:{os.getpid()}:w:t0"
    with Ledger.open(store_target) as one, Ledger.open(store_target) as two:
        queue(one, 3)
        t0 = clock[0]
        assert len(one.outbox.claim(None, name, 8, t0, lease=lease)) == 3
        keeper = LeaseKeeper(store_target, name, lease, clock=lambda: clock[0])
        keeper.claimed(t0)
        try:
            time.sleep(lease)  # renewals in time keep the rows
            assert keeper.holds()
            clock[0] = t0 + 10 * lease  # frozen, then resumed
            assert len(two.outbox.claim(None, "elsewhere:9:w:t0", 8, clock[0], 100)) == 3
            time.sleep(lease)  # the keeper's turns come (lease/3 each) before the sender looks
            assert not keeper.holds()
            # A fresh claim holds again (a thawed worker does not stay idle for good).
            keeper.claimed(clock[0])
            time.sleep(lease)
            assert keeper.holds()
        finally:
            keeper.close()
