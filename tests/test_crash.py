"""Exactly once across crashes: real runs killed with SIGKILL at random points, then finished.

No subscriber gets a paper twice, apart from the one message in flight at a kill, which is sent
again under the same Message-ID; none is skipped."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest

from conftest import ENV, SmtpServer, base_config, local_smtp, toml_text
from digest_mailer.config import load_config
from digest_mailer.select import select
from digest_mailer.sources import FileSource
from digest_mailer.store import Ledger, StoreTarget

TOPICS = [["diffusion"], ["speech recognition"], ["reinforcement learning"], ["agents"],
          ["quantization"], ["vision-language models"], []]
KILLS = 10


def survivors(config: Path, state: Path, wait: float = 1.5) -> list[int]:
    """Processes still running with this config on their command line, or holding the
    ledger's senders lock open (a sender process), after a moment."""
    time.sleep(wait)
    found = []
    lock = str(state) + ".senders"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if str(config).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
                continue
            if any(os.readlink(fd) == lock for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def senders_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    # The spawn machinery adds a resource tracker; the senders are the ones holding the lock.
    return [int(c) for c in text.split() if b"spawn_main" in
            Path(f"/proc/{c}/cmdline").read_bytes() and b"tracker_fd" in
            Path(f"/proc/{c}/cmdline").read_bytes()]


def setup(tmp_path: Path, smtp_server: SmtpServer, connections: int, readers: int = 56,
          store: StoreTarget | None = None) -> tuple[Path, list[str]]:
    # A slow server (80 ms a message) and enough readers that one run takes several seconds,
    # so kills land before, between and in the middle of messages.
    smtp_server.handler.data_delay = 0.08
    # With two connections the server offers PIPELINING, as Postfix does: a sender then has a
    # message's envelope, content and verdict apart, and kills land between them too.
    smtp_server.handler.pipelining = connections == 2
    subscribers = [{"email": f"reader{n:02d}@example.org", "topics": TOPICS[n % len(TOPICS)]}
                   for n in range(readers)]
    doc = base_config(tmp_path, smtp=local_smtp(smtp_server.port, connections=connections,
                                                timeout=5), subscribers=subscribers)
    if store is not None and store.url:
        doc["state"]["url"] = store.url
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    return path, [sys.executable, "-m", "digest_mailer", "run", "--config", str(path),
                  "--wait", "--date", "2025-06-02"]


def kill_when_sending(proc: subprocess.Popen[bytes], smtp_server: SmtpServer, before: int,
                      rng: random.Random) -> None:
    """Picks the moment of a kill: a third of them at a random moment of the run's start
    (reading, composing, or the first messages), the rest at a random moment once messages
    flow. Waiting for the first message, not a fixed delay, keeps kills landing mid-send on a
    loaded machine, where a run can take seconds to start sending."""
    if rng.random() < 1 / 3:
        time.sleep(rng.uniform(0.3, 2.0))
        return
    deadline = time.monotonic() + 30
    while (len(smtp_server.handler.received) == before and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.8))


@pytest.mark.parametrize("connections", [1, 2])
def test_sigkill_at_random_points_loses_and_doubles_nothing(
        tmp_path: Path, smtp_server: SmtpServer, connections: int,
        store_target: StoreTarget) -> None:
    path, command = setup(tmp_path, smtp_server, connections, store=store_target)
    env = {**os.environ, **ENV}
    rng = random.Random(int(os.environ.get("CRASH_SEED", "8058")) + connections)
    killed_while_sending = 0
    for _ in range(KILLS):
        before = len(smtp_server.handler.received)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kill_when_sending(proc, smtp_server, before, rng)
        proc.kill()
        proc.wait()
        if len(smtp_server.handler.received) > before and proc.returncode == -9:
            killed_while_sending += 1
    with Ledger.open_readonly(load_config(path).state_target) as ledger:
        ended = [r.outcome for r in ledger.runs()]
    # A run whose process died shows as interrupted, never as still running.
    assert "running" not in ended and "interrupted" in ended, ended
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert survivors(path, tmp_path / "state.sqlite3") == [], \
        "a sender process outlived its killed run"
    check_every_recipient(tmp_path, path, smtp_server, KILLS)
    assert killed_while_sending >= 1, "no kill landed in the middle of sending; adjust timing"


def test_a_sender_killed_alone_loses_nothing_and_the_run_ends(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    env = {**os.environ, **ENV}
    kills = 0
    for batch in range(3):  # each run has new readers, so each has senders at work to kill
        path, command = setup(tmp_path, smtp_server, 2, readers=56 * (batch + 1))
        before = len(smtp_server.handler.received)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while len(smtp_server.handler.received) < before + 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        victims = senders_of(proc.pid)
        if victims:
            os.kill(victims[0], signal.SIGKILL)
            kills += 1
        # The run notices, puts the dead sender's messages back, and ends by itself.
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert proc.returncode in (0, 1), err
    assert kills >= 2
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert survivors(path, tmp_path / "state.sqlite3") == []
    check_every_recipient(tmp_path, path, smtp_server, kills)


def check_every_recipient(tmp_path: Path, path: Path, smtp_server: SmtpServer,
                          kills: int) -> None:
    config = load_config(path)
    papers = FileSource(None, Path(config.source_location)).fetch(date(2025, 6, 2)).papers
    by_recipient: dict[str, dict[str, set[str]]] = defaultdict(dict)
    copies: dict[str, int] = defaultdict(int)
    for received in smtp_server.handler.received:
        msg = received.message
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        ids = set(re.findall(r"https://arxiv\.org/abs/(\S+)", text))
        by_recipient[received.rcpt_tos[0]][msg["Message-ID"]] = ids
        copies[msg["Message-ID"]] += 1
    for sub in config.subscribers_view():
        messages = by_recipient[sub.email]
        seen: list[str] = [pid for ids in messages.values() for pid in ids]
        assert len(seen) == len(set(seen)), f"{sub.email} got a paper in two emails"
        expected = {m.paper.id for m in select(sub, papers, frozenset()).matches}
        assert set(seen) == expected, f"{sub.email} missed papers"
    # Duplicates only ever repeat a message that was on the wire at a kill (one per
    # connection), under its own Message-ID.
    assert all(n - 1 <= kills for n in copies.values())
    assert sum(n - 1 for n in copies.values()) <= 2 * kills
    with Ledger.open_readonly(config.state_target) as ledger:
        assert ledger.outbox.open_entries() == []
        assert all(r.outcome != "running" for r in ledger.runs())
