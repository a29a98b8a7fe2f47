"""Per-message store cost: what a sender does with the ledger for each message (a share of a
claim of 32, the suppression look-up, the fate commit with its delivery and what it
offered), and what the composer does (its share of a batch insert of 32), on SQLite or PostgreSQL.

    .venv/bin/python bench/store_cost.py [--messages 5000] [--url postgresql://...]

Prints microseconds per message (wall time, and the sender part's CPU time, one process,
median of --repeats). Run it from an older checkout's bench/ folder to compare (the script
puts its own checkout first on the path)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from digest_mailer.store import Ledger
from digest_mailer.store.outbox import Queued

NOW = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of `url` (whose user may create databases)."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextmanager
def open_ledger(url: str | None) -> Iterator[Ledger]:
    if url:
        with fresh_database(url) as fresh, Ledger.open(fresh) as ledger:
            yield ledger
    else:
        with tempfile.TemporaryDirectory() as tmp, \
                Ledger.open(Path(tmp) / "state.sqlite3") as ledger:
            yield ledger


def once(messages: int, url: str | None) -> dict[str, float]:
    with open_ledger(url) as ledger:
        run = ledger.start_run(NOW, date(2025, 6, 2), "bench")
        box = ledger.outbox
        set_id = box.add_set(b"x" * 20_000, NOW)
        rows = [Queued(set_id, f"user{n}@example.org", f"User {n}", "https://u/x", "tok",
                       f"<{n}@bench>", "Subject", "from@example.org",
                       tuple(f"2506.{n % 900 + 10000}" for n in range(n, n + 8)),
                       tuple(f"2506.{n % 900 + 10000}" for n in range(n, n + 10)))
                for n in range(messages)]
        start = time.perf_counter()
        for at in range(0, messages, 32):
            box.add_many(rows[at:at + 32], run_id=run, now=NOW)
        composed = time.perf_counter() - start
        start = time.perf_counter()
        cpu = time.process_time()
        sent = 0
        while True:
            claimed = box.claim(run, "s1", 32, NOW.timestamp(), 60)
            if not claimed:
                break
            for entry in claimed:
                ledger.suppressed(entry.recipient)
                box.sent(entry.id, NOW, run, entry=entry)
                sent += 1
        sending = time.perf_counter() - start
        cpu = time.process_time() - cpu
        assert sent == messages
        # CPU time as well: on a busy machine wall time mostly measures the others.
        return {"compose_us": composed / messages * 1e6, "send_us": sending / messages * 1e6,
                "send_cpu_us": cpu / messages * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url", default=None, help="a PostgreSQL URL (default: SQLite)")
    args = parser.parse_args()
    runs = [once(args.messages, args.url) for _ in range(args.repeats)]
    print(json.dumps({k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}))


if __name__ == "__main__":
    main()
