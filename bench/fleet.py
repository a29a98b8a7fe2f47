"""Throughput of `send` workers on one outbox, on PostgreSQL and on SQLite.

    python bench/fleet.py --subscribers 10000 --workers 1,2,4

For each engine and worker count: a fresh ledger, `run --compose-only` (timed alone), then that
many `digest-mailer send --until-empty --connections 0` processes started together against
smtp-sink (Postfix's C sink; aiosmtpd when it is missing); the figure is the messages sent over
the time from their start to the last one's exit. PostgreSQL: $DIGEST_MAILER_TEST_PG, or a
throwaway cluster (tests/pgcluster.py). Uses bench.py's generated feed and config.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench import (  # noqa: E402
    SECRET,
    make_feed,
    make_profiles,
    start_sink,
    write_config,
)

CLI = [sys.executable, "-m", "digest_mailer"]
ENV = {**os.environ, "DIGEST_UNSUBSCRIBE_SECRET": SECRET}


def fresh_pg(server: str) -> str:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = server.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + "/" + name


def config_for(base: Path, folder: Path, engine: str, server: str | None) -> Path:
    text = base.read_text(encoding="utf-8")
    state = folder / "state.sqlite3"
    text = text.replace(f'path = {json.dumps(str(base.parent / "state.sqlite3"))}',
                        f"path = {json.dumps(str(state))}"
                        + (f'\nurl = "{fresh_pg(server)}"' if engine == "postgresql" and
                           server else ""))
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def sent_count(path: Path) -> int:
    from digest_mailer.config import load_config
    from digest_mailer.store import Ledger

    with Ledger.open_readonly(load_config(path).state_target) as ledger:
        return ledger.outbox.counts().get("sent", 0)


def measure(base: Path, engine: str, server: str | None, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        path = config_for(base, Path(tmp), engine, server)
        start = time.perf_counter()
        subprocess.run([*CLI, "run", "--config", str(path), "--compose-only", "--date",
                        "2025-06-02"], env=ENV, check=True, capture_output=True)
        composed = time.perf_counter() - start
        start = time.perf_counter()
        procs = [subprocess.Popen([*CLI, "send", "--config", str(path), "--until-empty",
                                   "--connections", "0"], env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(workers)]
        for p in procs:
            p.wait(timeout=1800)
        seconds = time.perf_counter() - start
        sent = sent_count(path)
    return {"engine": engine, "workers": workers, "sent": sent, "compose_s": round(composed, 2),
            "send_s": round(seconds, 2), "per_s": round(sent / seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--papers", type=int, default=100)
    ap.add_argument("--profiles", type=int, default=300)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sink, port, sink_name = start_sink("smtp-sink" if Path("/usr/sbin/smtp-sink").exists()
                                       else "aiosmtpd")
    cluster: Path | None = None
    server = os.environ.get("DIGEST_MAILER_TEST_PG")
    try:
        if "postgresql" in args.engines and not server:
            import pgcluster

            cluster = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
            server = pgcluster.start(cluster)
        with tempfile.TemporaryDirectory(prefix="fleet-gen-") as gen:
            folder = Path(gen)
            feed = folder / "feed.json"
            papers = make_feed(args.papers, rng)
            feed.write_text(json.dumps(papers), encoding="utf-8")
            profiles = make_profiles(args.profiles, papers, rng)
            base = write_config(folder, args.subscribers, profiles, feed, rng, port)
            print(f"{args.subscribers} subscribers, {args.profiles} profiles, {sink_name}, "
                  f"load {os.getloadavg()[0]:.1f}")
            for engine in args.engines.split(","):
                for n in (int(w) for w in args.workers.split(",")):
                    r = measure(base, engine, server, n)
                    print(json.dumps(r), flush=True)
    finally:
        sink.kill()
        if cluster is not None:
            import pgcluster

            pgcluster.stop(cluster)


if __name__ == "__main__":
    main()
