"""How long `subscribers import` takes for N rows (default 100,000), first import and again
(every row unchanged), into a fresh ledger in a temporary folder.

    .venv/bin/python bench/bench_import.py --rows 100000
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """[newsletter]
name = "Daily Papers"
from = "Daily Papers <papers@example.org>"
[state]
path = "state.sqlite3"
[unsubscribe]
url = "https://papers.example.org/unsubscribe/{token}"
"""
TOPICS = ["diffusion", "world models", "reinforcement learning", "speech", "agents",
          "robotics", "retrieval augmented generation", "mixture of experts"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "c.toml").write_text(CONFIG)
        data = folder / "subscribers.csv"
        with data.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["email", "name", "topics", "frequency", "weekday"])
            for i in range(args.rows):
                w.writerow([f"reader{i}@example.org", f"Reader {i}",
                            f"{TOPICS[i % 8]};{TOPICS[(i * 3 + 1) % 8]}",
                            "weekly" if i % 5 == 0 else "daily", "fri"])
        exe = Path(sys.executable).with_name("digest-mailer")
        for label in ("first import", "again (all unchanged)"):
            started = time.perf_counter()
            proc = subprocess.run([str(exe), "subscribers", "import", str(data), "--config",
                                   str(folder / "c.toml")], capture_output=True, text=True,
                                  check=True)
            took = time.perf_counter() - started
            print(f"{label}: {args.rows:,} rows in {took:.1f} s (whole command); "
                  f"{proc.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
