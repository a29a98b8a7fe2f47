"""Attacks on send workers: a worker frozen past its lease and resumed, a run started while
workers hold rows, an unsubscribe while a worker holds a claimed batch, the PostgreSQL server
gone mid-run. Real SQLite/PostgreSQL, real aiosmtpd, real processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pgcluster
import pytest
from sqlalchemy import func, select
from test_fleet import CLI, compose_only, queue, wait_for, worker, write_config

from conftest import ENV, NOW, SmtpHandler, SmtpServer, fresh_pg_database, start_smtp
from digest_mailer.lease import LeaseKeeper
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.tables import outbox


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
            # Frozen: another worker takes the rows once their lease has run out; only then
            # does the keeper resume and see the time. (Moving its clock first let its thread
            # renew at the new time before the claim, and the claim found nothing: CI-like
            # run, once.)
            later = t0 + 10 * lease
            assert len(two.outbox.claim(None, "elsewhere:9:w:t0", 8, later, 100)) == 3
            clock[0] = later  # resumed
            time.sleep(lease)  # the keeper's turns come (lease/3 each) before the sender looks
            assert not keeper.holds()
            # A fresh claim holds again (a thawed worker does not stay idle for good).
            keeper.claimed(clock[0])
            time.sleep(lease)
            assert keeper.holds()
        finally:
            keeper.close()


def pg_ctl(root: Path, *args: str) -> None:
    bins = pgcluster.bindir()
    assert bins is not None
    subprocess.run(pgcluster._as_owner([str(bins / "pg_ctl"), "-D", str(root / "data"), "-w",
                                        "-t", "60", *args]),
                   check=True, capture_output=True, timeout=90)


@pytest.fixture
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A cluster of this test's own, to stop and start again."""
    if pgcluster.bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb)")  # pg_server's rule applies
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="digest-pg-gone-"))
    try:
        yield root, pgcluster.start(root)
    finally:
        pgcluster.stop(root)


def test_a_worker_whose_postgresql_goes_away_stops_with_one_error_and_loses_nothing(
        tmp_path: Path, own_pg: tuple[Path, str]) -> None:
    root, url = own_pg
    handler = SmtpHandler(data_delay=0.3)
    controller, port = start_smtp(handler)
    try:
        smtp = SmtpServer(handler, port)
        path = write_config(tmp_path, smtp, readers=8, url=url, lease="2s")
        compose_only(path)
        w = worker(path, "--until-empty", "--connections", "0")
        wait_for(lambda: handler.received, 60, "the worker never sent")
        pg_ctl(root, "-m", "fast", "stop")  # immediate would lose async commits
        gone = time.monotonic()
        try:
            out, err = w.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            w.kill()
            pytest.fail("the worker did not end after its ledger went away")
        took = time.monotonic() - gone
        assert w.returncode != 0 and "Traceback" not in err, err
        errors = [line for line in (out + err).splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, err
        assert took < 60
        pg_ctl(root, "-o", f"-p {url.rsplit(':', 1)[1].split('/')[0]} -k {root} "
               "-c listen_addresses=127.0.0.1 -c fsync=off", "-l", str(root / "log"), "start")
        time.sleep(2.5)  # the lease of what it held runs out
        done = subprocess.run([*CLI, "send", "--config", str(path), "--until-empty",
                               "--connections", "0"], env={**os.environ, **ENV},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        got = [(r.rcpt_tos[0], r.message["Message-ID"]) for r in handler.received]
        assert {to for to, _ in got} == {f"reader{n:02d}@example.org" for n in range(8)}
        # Resent at most: the message on the wire and the one whose fate commit was under
        # way (the crash promise, per connection), each under its own Message-ID again.
        assert len(got) - len({to for to, _ in got}) <= 2, (got, err)
        assert len(set(got)) == len({to for to, _ in got})
    finally:
        controller.stop()


@pytest.fixture
def pg_target(pg_server: str) -> Iterator[StoreTarget]:
    with fresh_pg_database(pg_server) as url:
        yield StoreTarget.parse(url)


def test_a_run_adopting_leaves_rows_a_worker_claims_meanwhile_to_it(
        pg_target: StoreTarget) -> None:
    """A run starts while workers send: on PostgreSQL a worker may claim rows between the
    run's look at the live holders and its adoption. (SQLite's one writer rules it out.)"""
    alive = f"{socket.gethostname()}:{os.getpid()}:w:t0"
    late = "elsewhere:9:w:t0"
    with Ledger.open(pg_target) as one, Ledger.open(pg_target) as two:
        queue(one, 6)
        t = time.time()
        assert len(one.outbox.claim(None, alive, 2, t, lease=60)) == 2
        taken: list[int] = []

        def dead(holder: str) -> bool:
            # Called between the look and the update: a worker on another host claims now.
            taken.extend(e.id for e in two.outbox.claim(None, late, 2, time.time(), 60))
            return False

        run = one.start_run(NOW, date(2025, 6, 3), "y")
        adopted = one.outbox.adopt(run, dead=dead)
        assert len(taken) == 2
        assert {e.id for e in adopted}.isdisjoint(taken)
        assert len(adopted) == 2  # the rows nobody held
        # Both workers still hold theirs: their renewals find them.
        assert two.outbox.renew(late, time.time() + 60) == 2
        assert one.outbox.renew(alive, time.time() + 60) == 2


def test_an_unsubscribe_while_a_worker_holds_the_batch_stops_the_rest_of_it(
        tmp_path: Path, pg_target: StoreTarget) -> None:
    handler = SmtpHandler(data_delay=1.0)
    controller, port = start_smtp(handler)
    try:
        path = write_config(tmp_path, SmtpServer(handler, port), readers=8,
                            url=str(pg_target.url), lease="30s")
        # One digest for all: one claim holds every row.
        path.write_text(re.sub(r"topics = \[[^\]]*\]", 'topics = ["diffusion"]',
                               path.read_text()))
        compose_only(path)
        w = worker(path, "--until-empty", "--connections", "0")
        wait_for(lambda: handler.received, 60, "the worker never sent")
        with Ledger.open(pg_target) as ledger:
            held = ledger.conn.execute(select(func.count()).where(
                outbox.c.state == "sending")).scalar()
            assert held and held >= 5, "the batch is not in the worker's hands"
            before = len(handler.received)
            for n in range(8):
                ledger.suppress(f"reader{n:02d}@example.org", "unsubscribed", NOW)
        _, err = w.communicate(timeout=90)
        assert w.returncode == 0, err
        # The one on the wire when they left, and the one checked while it was, go out.
        assert len(handler.received) - before <= 2, err
        with Ledger.open_readonly(pg_target) as ledger:
            assert ledger.outbox.counts().get("cancelled", 0) >= 8 - len(handler.received)
    finally:
        controller.stop()


@dataclass
class SeenHandler(SmtpHandler):
    """Notes when each DATA begins: the whole message has been written by then."""

    began: list[float] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.began.append(time.monotonic())
        return await super().handle_DATA(server, session, envelope)


def test_a_worker_stopped_past_its_lease_and_resumed_sends_nothing_more(
        tmp_path: Path, pg_target: StoreTarget) -> None:
    handler = SeenHandler(data_delay=1.0)
    controller, port = start_smtp(handler)
    try:
        path = write_config(tmp_path, SmtpServer(handler, port), readers=5,
                            url=str(pg_target.url), lease="2s")
        path.write_text(re.sub(r"topics = \[[^\]]*\]", 'topics = ["diffusion"]',
                               path.read_text()))
        compose_only(path)
        a = worker(path, "--until-empty", "--connections", "0")
        # Frozen while its second message is on the wire, the third already checked.
        wait_for(lambda: len(handler.began) >= 2, 60, "the worker never sent")
        os.kill(a.pid, signal.SIGSTOP)
        try:
            time.sleep(3)  # past its lease
            done = subprocess.run([*CLI, "send", "--config", str(path), "--until-empty",
                                   "--connections", "0"], env={**os.environ, **ENV},
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            time.sleep(0.5)  # the frozen one's message on the wire has landed by now
            before = len(handler.received)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        _, err = a.communicate(timeout=60)
        assert a.returncode == 0, err
        assert len(handler.received) == before, err  # nothing more from the thawed worker
        got = [(r.rcpt_tos[0], r.message["Message-ID"]) for r in handler.received]
        assert {to for to, _ in got} == {f"reader{n:02d}@example.org" for n in range(5)}
        # Twice only what was on its wire (or accepted, its fate not yet committed) when it
        # froze, under the same Message-ID.
        assert len(got) - len({to for to, _ in got}) <= 2, (got, err)
        assert len(set(got)) == len({to for to, _ in got})
    finally:
        controller.stop()
