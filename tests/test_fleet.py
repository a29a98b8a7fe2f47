"""Senders on many hosts: `send` workers on one shared outbox, leases that bring a dead
worker's messages back, the run and scheduler locks on PostgreSQL, and the same commands on
SQLite on one host. Real PostgreSQL (tests/pgcluster.py), real aiosmtpd servers, real
processes; a "host" dying is a worker's whole process group SIGKILLed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_crash import TOPICS, check_every_recipient

from conftest import ENV, NOW, SmtpServer, base_config, fresh_pg_database, local_smtp, toml_text
from digest_mailer.lease import LeaseKeeper, holder_dead
from digest_mailer.models import OutgoingMessage
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.tables import outbox, runs

CLI = [sys.executable, "-m", "digest_mailer"]


def wait_for(what: Callable[[], Any], seconds: float, why: str) -> Any:
    """Polls `what` until it gives something true; fails after `seconds` (generous: the
    machine may be loaded)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out after {seconds:.0f}s: {why}")


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    with fresh_pg_database(pg_server) as url:
        yield url


def write_config(tmp_path: Path, smtp: SmtpServer, *, readers: int, url: str | None,
                 lease: str = "3s", **smtp_extra: Any) -> Path:
    subscribers = [{"email": f"reader{n:02d}@example.org", "topics": TOPICS[n % len(TOPICS)]}
                   for n in range(readers)]
    doc = base_config(tmp_path, smtp=local_smtp(smtp.port, timeout=5, **smtp_extra),
                      subscribers=subscribers)
    doc["delivery"]["lease"] = lease
    doc["delivery"]["retry_delay"] = "1s"
    if url:
        doc["state"]["url"] = url
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    return path


def compose_only(path: Path) -> None:
    done = subprocess.run([*CLI, "run", "--config", str(path), "--compose-only", "--date",
                           "2025-06-02"], env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "queued for the send workers" in done.stderr + done.stdout


def worker(path: Path, *args: str) -> subprocess.Popen[str]:
    # A session of its own: killing its group is a host going down with everything on it.
    return subprocess.Popen([*CLI, "send", "--config", str(path), *args],
                            env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def held_by(target: StoreTarget, pid: int) -> list[int]:
    """The rows a worker process (host:pid:...) has in hand."""
    prefix = f"{socket.gethostname()}:{pid}:"
    with Ledger.open_readonly(target) as ledger:
        rows = ledger.conn.execute(select(outbox.c.id, outbox.c.claimed_by).where(
            outbox.c.state == "sending")).fetchall()
    return [i for i, by in rows if by and by.startswith(prefix)]


# -- leases ---------------------------------------------------------------------------------

def message(to: str, message_id: str, set_id: int) -> OutgoingMessage:
    return OutgoingMessage(recipient=to, envelope_from="p@x.org", message_id=message_id,
                           subject="S", data=b"", html="", run_date=date(2025, 6, 2),
                           set_id=set_id)


def queue(ledger: Ledger, n: int) -> None:
    run = ledger.start_run(NOW, date(2025, 6, 2), "x")
    set_id = ledger.outbox.add_set(b"t", NOW)
    for i in range(n):
        ledger.outbox.add(message(f"s{i}@x.org", f"<{i}@x>", set_id), run_id=run,
                          included=["1"], offered=["1"], now=NOW)


def test_an_expired_lease_returns_the_rows_and_a_renewed_one_keeps_them(
        store_target: StoreTarget) -> None:
    with Ledger.open(store_target) as one, Ledger.open(store_target) as two:
        queue(one, 5)
        t = time.time()
        a = one.outbox.claim(None, "hostA:1:w:t0", 8, t, lease=10)
        assert len(a) == 5
        assert two.outbox.claim(None, "hostB:2:w:t0", 8, t + 5, lease=10) == []
        # A renews before its lease runs out: still its own past the first expiry.
        assert one.outbox.renew("hostA:1:w:t0", t + 30) == 5
        assert two.outbox.claim(None, "hostB:2:w:t0", 8, t + 20, lease=10) == []
        # A stops renewing (it died): past the lease, B takes the same rows, same Message-IDs.
        b = two.outbox.claim(None, "hostB:2:w:t0", 8, t + 31, lease=10)
        assert sorted(e.message_id for e in b) == sorted(e.message_id for e in a)
        # A's late release (it was only frozen) no longer touches B's rows.
        one.outbox.release([e.id for e in a], by="hostA:1:w:t0")
        assert two.outbox.renew("hostB:2:w:t0", t + 60) == 5
        # Both sent it (A's copy went out before it learnt): one delivery, no error.
        one.outbox.sent(a[0].id, NOW, None, entry=a[0])
        two.outbox.sent(b[0].id, NOW, None, entry=next(e for e in b if e.id == a[0].id))
        assert len(two.deliveries(a[0].recipient)) == 1


def test_a_live_worker_keeps_its_rows_while_its_keeper_renews(
        store_target: StoreTarget) -> None:
    lease = 2.0
    with Ledger.open(store_target) as one, Ledger.open(store_target) as two:
        queue(one, 3)
        name = f"{socket.gethostname()}:{os.getpid()}:w:t0"
        assert len(one.outbox.claim(None, name, 8, time.time(), lease=lease)) == 3
        keeper = LeaseKeeper(store_target, name, lease)
        try:
            start = time.monotonic()
            while time.monotonic() - start < 2.5 * lease:  # well past the first lease
                assert two.outbox.claim(None, "elsewhere:9:w:t0", 8, time.time(), 2) == []
                time.sleep(0.2)
            assert keeper.holds()
        finally:
            keeper.close()
        # The keeper stopped (its sender died): the rows come back after one lease.
        taken = wait_for(lambda: two.outbox.claim(None, "elsewhere:9:w:t0", 8, time.time(),
                                                  2), 6 * lease, "the lease never ran out")
        assert len(taken) == 3


def test_a_holder_on_this_host_is_known_dead_only_when_its_process_is_gone() -> None:
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert holder_dead(f"{host}:{gone.pid}:w:t0")
    assert not holder_dead(f"{host}:{os.getpid()}:w:t0")
    assert not holder_dead(f"other-host:{gone.pid}:w:t0")  # elsewhere: its lease decides


# -- workers on several hosts (PostgreSQL) --------------------------------------------------

def test_three_workers_one_killed_lose_nothing_and_double_nothing(
        tmp_path: Path, smtp_server: SmtpServer, pg_url: str) -> None:
    smtp_server.handler.data_delay = 0.05
    path = write_config(tmp_path, smtp_server, readers=42, url=pg_url)
    target = StoreTarget.parse(pg_url)
    compose_only(path)
    assert smtp_server.handler.received == []  # --compose-only sends nothing itself
    workers = [worker(path, "--until-empty", "--connections", n) for n in ("0", "0", "1")]
    victim = workers[0]
    try:
        held = wait_for(lambda: held_by(target, victim.pid), 60,
                        "the first worker never claimed anything")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        for w in workers[1:]:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
            assert "Traceback" not in err and "The outbox is empty" in err, err
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    with Ledger.open_readonly(target) as ledger:
        states = dict(ledger.conn.execute(select(outbox.c.id, outbox.c.state)).fetchall())
    assert all(states[i] == "sent" for i in held), "the dead worker's rows never came back"
    check_every_recipient(tmp_path, path, smtp_server, kills=1)


def test_the_truth_at_send_time_holds_for_a_worker(
        tmp_path: Path, smtp_server: SmtpServer, pg_url: str) -> None:
    path = write_config(tmp_path, smtp_server, readers=4, url=pg_url)
    compose_only(path)
    text = path.read_text().replace('email = "reader01@example.org"',
                                    'email = "reader01@example.org"\npause = true')
    path.write_text(text)
    with Ledger.open(StoreTarget.parse(pg_url)) as ledger:
        ledger.suppress("reader02@example.org", "unsubscribed", NOW)
    done = subprocess.run([*CLI, "send", "--config", str(path), "--until-empty",
                           "--connections", "0"], env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = {r.rcpt_tos[0] for r in smtp_server.handler.received}
    assert "reader01@example.org" not in got and "reader02@example.org" not in got
    assert {"reader00@example.org", "reader03@example.org"} <= got
    with Ledger.open_readonly(StoreTarget.parse(pg_url)) as ledger:
        assert ledger.outbox.counts().get("cancelled") == 2


def test_the_run_lock_on_postgresql_is_an_advisory_lock_status_names_its_holder(
        tmp_path: Path, smtp_server: SmtpServer, pg_url: str) -> None:
    from digest_mailer.pglock import RUN_KEY, AdvisoryLock

    path = write_config(tmp_path, smtp_server, readers=2, url=pg_url)
    with AdvisoryLock(StoreTarget.parse(pg_url), RUN_KEY, "run") as lock:
        assert lock.try_acquire()
        refused = subprocess.run([*CLI, "run", "--config", str(path)], capture_output=True,
                                 text=True, env={**os.environ, **ENV}, timeout=60)
        assert refused.returncode == 1
        assert f"pid {os.getpid()} on {socket.gethostname()}" in refused.stderr
        status = subprocess.run([*CLI, "status", "--config", str(path)], capture_output=True,
                                text=True, env={**os.environ, **ENV}, timeout=60)
        assert status.returncode == 0, status.stderr
        assert f"Run lock: held by digest-mailer run pid {os.getpid()}" in status.stdout
    # The holder's connection gone, the lock is free at once.
    done = subprocess.run([*CLI, "run", "--config", str(path), "--date", "2025-06-02"],
                          capture_output=True, text=True, env={**os.environ, **ENV},
                          timeout=120)
    assert done.returncode == 0, done.stderr


# -- one scheduler leads --------------------------------------------------------------------

def serve(path: Path, log: Path) -> subprocess.Popen[str]:
    """`serve` in a session of its own, its stderr in `log`: a pipe nobody read while it ran
    could fill and block it, and a failure could not say what it had printed."""
    with log.open("w") as err:
        return subprocess.Popen([*CLI, "serve", "--config", str(path)],
                                env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                                stderr=err, text=True, start_new_session=True)


def stopped(proc: subprocess.Popen[str], log: Path) -> str:
    """SIGTERM, the exit within a minute, and what it printed."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return log.read_text()


def finished_runs(target: StoreTarget) -> list[tuple[str, int]]:
    with Ledger.open_readonly(target) as ledger:
        return [(s, p) for s, p in ledger.conn.execute(
            select(runs.c.started_at, runs.c.pid).where(runs.c.finished_at.is_not(None)))]


def test_two_serve_processes_one_composes_per_scheduled_time(
        tmp_path: Path, smtp_server: SmtpServer, pg_url: str) -> None:
    from datetime import datetime

    path = write_config(tmp_path, smtp_server, readers=3, url=pg_url, connections=0)
    doc = path.read_text() + '\n[schedule]\ncron = "*/2 * * * * *"\n'  # every 2 seconds
    path.write_text(doc)
    target = StoreTarget.parse(pg_url)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = serve(path, logs[0])
    procs = [first]
    try:
        wait_for(lambda: finished_runs(target), 60, "the first serve never ran")
        second = serve(path, logs[1])
        procs.append(second)
        time.sleep(1.0)  # let the second start up before counting (not an assertion)
        start = len(finished_runs(target))
        wait_for(lambda: len(finished_runs(target)) >= start + 3, 60, "no scheduled runs")
        pids = {p for _, p in finished_runs(target)}
        assert pids == {first.pid}, "the second serve composed while the first led"
        # The leader stops: the other takes the lead at its next scheduled time.
        err = stopped(first, logs[0])
        assert first.returncode == 0 and "Traceback" not in err, err
        wait_for(lambda: any(p == second.pid for _, p in finished_runs(target)), 60,
                 "the second serve never took the lead")
        err2 = stopped(second, logs[1])
        assert second.returncode == 0 and "Traceback" not in err2, err2
        assert "another serve leads" in err2 and "now leads" in err2
        assert "sending from" in err2  # the follower sent all along (its own worker)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for log in logs:  # shown with a failure
            if log.exists():
                print(f"--- {log.name}\n{log.read_text()[-4000:]}")
    # Exactly one run per scheduled time: never two runs started in the same 2 s slot.
    slots = [int(datetime.fromisoformat(s).timestamp()) // 2 for s, _ in finished_runs(target)]
    assert len(slots) == len(set(slots)), sorted(slots)
    # Every reader got their one email, once.
    got = sorted(r.rcpt_tos[0] for r in smtp_server.handler.received)
    assert got == sorted(set(got))


# -- the same commands on SQLite, one host --------------------------------------------------

def test_send_on_sqlite_sends_what_a_compose_only_run_queued_and_stops_on_sigterm(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = write_config(tmp_path, smtp_server, readers=14, url=None, connections=1)
    w = worker(path)  # runs until stopped
    try:
        compose_only(path)  # the worker holds no lock a run needs

        def all_sent() -> bool:
            # Nothing open, and the server has every delivery (what the worker sent while
            # the run composed left the outbox at the run's end: it is a delivery now).
            with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
                return not ledger.outbox.open_entries() and \
                    len(smtp_server.handler.received) >= len(ledger.deliveries()) > 0

        wait_for(all_sent, 90, "the worker did not send what the run queued")
        w.send_signal(signal.SIGTERM)
        _, err = w.communicate(timeout=5 + 30)  # the SMTP timeout plus a margin
        assert w.returncode == 0, err
        assert "Stopped as asked" in err and "Traceback" not in err
    finally:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
    check_every_recipient(tmp_path, path, smtp_server, kills=0)


# -- the shipped systemd unit ---------------------------------------------------------------

def test_the_systemd_template_unit_runs_a_real_send_command() -> None:
    import configparser
    import shlex

    from digest_mailer.cli import cli

    unit = Path(__file__).resolve().parents[1] / "contrib" / "systemd" / \
        "digest-mailer-send@.service"
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(unit.read_text())
    argv = shlex.split(parser["Service"]["ExecStart"])
    assert Path(argv[0]).name == "digest-mailer"
    command = cli.get_command(None, argv[1])  # type: ignore[arg-type]
    assert command is not None and command.name == "send", argv
    # Every option it passes is one `send` takes (click raises on an unknown one).
    command.make_context("send", argv[2:])
    # SIGTERM is a clean stop within the SMTP timeout plus ~5 s; systemd must wait longer.
    assert parser["Service"]["KillSignal"] == "SIGTERM"
    assert int(parser["Service"]["TimeoutStopSec"]) > 30 + 5


def test_a_worker_stopped_mid_queue_releases_the_rest_and_exits_0(
        tmp_path: Path, smtp_server: SmtpServer, pg_url: str) -> None:
    smtp_server.handler.data_delay = 0.3  # slow: the stop lands with most still queued
    path = write_config(tmp_path, smtp_server, readers=14, url=pg_url, lease="60s")
    target = StoreTarget.parse(pg_url)
    compose_only(path)
    w = worker(path, "--connections", "1")
    try:
        wait_for(lambda: len(smtp_server.handler.received) >= 2, 60, "nothing was sent")
        w.send_signal(signal.SIGTERM)
        _, err = w.communicate(timeout=5 + 30)  # the SMTP timeout (5) plus a margin
        assert w.returncode == 0 and "Stopped as asked" in err, err
    finally:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
    with Ledger.open_readonly(target) as ledger:
        counts = ledger.outbox.counts()
    # Nothing left in its hands (a 60 s lease would otherwise hold it), the rest queued.
    assert "sending" not in counts and counts.get("pending", 0) > 0, counts
    smtp_server.handler.data_delay = 0
    done = subprocess.run([*CLI, "send", "--config", str(path), "--until-empty",
                           "--connections", "0"], env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    check_every_recipient(tmp_path, path, smtp_server, kills=0)
