"""A simulated year of daily runs against one ledger: does a run get slower, or the ledger
bigger, as history accumulates? (issue 11, point 3)

Each day: the feed of the lookback window (today's new papers and yesterday's), remembered;
what the ledger says was offered, read once for everyone as a run reads it; for each
subscriber, the selection (the real matching code) and the outbox rows; then every message
"sent" as a sender records it (a claim of 32, the suppression look-up, one commit per message
with its delivery); then the retention policy's prune, as a run does at its end. No SMTP, no
rendering: the ledger's part.

    .venv/bin/python bench/year.py --days 365 --subscribers 10000 [--url postgresql://...]

Prints one JSON line per day (`--every` thins them) and a summary: the first and last runs'
times, the median of the first and last weeks, the ledger's size on the way.

The first and last weeks are minutes apart, and this machine's speed drifts by a fifth within
half an hour. So on SQLite the summary also compares them back to back: copies of the ledger
as it was after the first week and as it is at the end each run the day that followed, in
turn, `--repeats` times (`interleaved`): the same machine state for both."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_cost import open_ledger

from bench import make_feed, make_profiles
from digest_mailer.models import Paper, RunState, Subscriber
from digest_mailer.select import ranked_matches, select_ranked
from digest_mailer.store import Ledger
from digest_mailer.store.ops import size_bytes
from digest_mailer.store.outbox import Queued
from digest_mailer.store.retention import Retention, prune
from digest_mailer.store.schema import sqlite_backup
from digest_mailer.topics import Feed

START = datetime(2025, 1, 1, 7, 0, tzinfo=UTC)


def day_papers(day: int, per_day: int, rng: random.Random) -> list[Paper]:
    listed = (START + timedelta(days=day)).date()
    out = []
    for n, item in enumerate(make_feed(per_day, rng)):
        p = item["paper"]
        out.append(Paper(id=f"{25 + day // 366:02d}{(day % 366) // 31 + 1:02d}."
                            f"{(day % 31) * 1000 + n:05d}",
                         title=p["title"], abstract=p["summary"],
                         authors=tuple(a["name"] for a in p["authors"]), listed_on=listed,
                         upvotes=p["upvotes"], ai_keywords=tuple(p["ai_keywords"])))
    return out


def subscribers(count: int, profiles: list[dict[str, Any]], rng: random.Random
                ) -> list[Subscriber]:
    weights = [1 / (rank + 1) for rank in range(len(profiles))]
    chosen = rng.choices(profiles, weights=weights, k=count)
    return [Subscriber(email=f"reader{n}@example.org", topics=tuple(p.get("topics", ())),
                       exclude=tuple(p.get("exclude", ())), authors=tuple(p.get("authors", ())),
                       min_upvotes=p.get("min_upvotes", 0), max_papers=p["max_papers"])
            for n, p in enumerate(chosen)]


class Phases:
    """Wall and CPU (process) time per phase of a day, summed over its stretches."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._at = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        """The time since the last lap, added to `name`."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[name] = self.wall.get(name, 0.0) + wall - self._at[0]
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu - self._at[1]
        self._at = (wall, cpu)

    def row(self) -> dict[str, float]:
        out = {}
        for name in self.wall:
            out[f"{name}_s"] = round(self.wall[name], 3)
            out[f"{name}_cpu"] = round(self.cpu[name], 3)
        return out


PHASES = ("remember", "offered", "select", "add", "send", "prune")


def one_day(ledger: Ledger, day: int, papers: list[Paper], subs: list[Subscriber],
            policy: Retention) -> dict[str, Any]:
    now = START + timedelta(days=day)
    started = time.perf_counter()
    cpu = time.process_time()
    phases = Phases()
    ledger.remember(papers, now)
    run = ledger.start_run(now, now.date(), "year")
    box = ledger.outbox
    set_id = box.add_set(b"digest template " * 1000, now)
    feed = Feed.of(papers)
    phases.lap("remember")
    # As a run's composer reads them: once for everyone, from the earliest first sighting.
    first_seen = ledger.first_seen([p.id for p in papers])
    offers = ledger.offers({p.id: first_seen.get(p.id, now) for p in papers}, now)
    ranked: dict[tuple[object, ...], Any] = {}
    batch: list[Queued] = []
    phases.lap("offered")
    for sub in subs:
        key = (sub.topics, sub.exclude, sub.authors, sub.min_upvotes)
        if key not in ranked:
            ranked[key] = ranked_matches(sub, feed)
        phases.lap("select")
        offered = offers.of(sub.email, (m.paper.id for m in ranked[key]))
        phases.lap("offered")
        chosen = select_ranked(sub, ranked[key], offered)
        if not chosen.matches:
            phases.lap("select")
            continue
        batch.append(Queued(set_id, sub.email, "", "https://u/x", "token",
                            f"<{day}.{sub.email}@bench>", "Subject", "p@example.org",
                            tuple(m.paper.id for m in chosen.matches), chosen.offered))
        phases.lap("select")
        if len(batch) == 32:
            box.add_many(batch, run_id=run, now=now)
            batch = []
            phases.lap("add")
    if batch:
        box.add_many(batch, run_id=run, now=now)
    phases.lap("add")
    sent = 0
    while claimed := box.claim(run, "s1", 32, now.timestamp(), 60):
        for entry in claimed:
            ledger.suppressed(entry.recipient)
            box.sent(entry.id, now, run, entry=entry)
            sent += 1
    phases.lap("send")
    box.park(run)
    box.forget_sent(run)
    box.prune_sets()
    pruned = prune(ledger, policy, now)
    ledger.checkpoint()
    ledger.finish_run(run, now, fetched=len(papers), sent=sent, failed=0,
                      outcome=RunState.OK)
    phases.lap("prune")
    ended = time.perf_counter()
    cpu = time.process_time() - cpu
    counts = ledger.counts()
    return {"day": day, "seconds": round(ended - started, 3), "cpu_s": round(cpu, 3),
            **phases.row(), "sent": sent, "pruned": pruned.total,
            "deliveries": counts["deliveries"],
            "size_mb": round((size_bytes(ledger) or 0) / 1e6, 1)}


def medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each phase's median over `rows` (several days: the machine is shared)."""
    keys = ["seconds", "cpu_s"] + [f"{p}_{k}" for p in PHASES for k in ("s", "cpu")]
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in keys}


def compare(young: tuple[Path, list[Paper], int], old: tuple[Path, list[Paper], int],
            subs: list[Subscriber], policy: Retention, repeats: int) -> dict[str, Any]:
    """The day after the first week and the day after the last, each on a fresh copy of the
    ledger as it was then, in turn: their CPU medians and the ratio."""
    rows: dict[str, list[dict[str, Any]]] = {"first_week": [], "last": []}
    for _ in range(repeats):
        for name, (snapshot, papers, day) in (("first_week", young), ("last", old)):
            work = snapshot.with_suffix(".run")
            shutil.copyfile(snapshot, work)
            with Ledger.open(work) as ledger:
                rows[name].append(one_day(ledger, day, papers, subs, policy))
            for leftover in work.parent.glob(work.name + "*"):
                leftover.unlink()
    first, last = (medians(rows[k]) for k in ("first_week", "last"))
    return {"repeats": repeats, "first_week_cpu_s": first["cpu_s"],
            "last_cpu_s": last["cpu_s"],
            "last_vs_first_week_cpu": round(last["cpu_s"] / first["cpu_s"], 3),
            "runs_cpu_s": {k: [r["cpu_s"] for r in v] for k, v in rows.items()},
            "first_week_phases": first, "last_phases": last}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=50, help="new papers per day")
    parser.add_argument("--profiles", type=int, default=300)
    parser.add_argument("--keep-history", type=float, default=365.0, help="days")
    parser.add_argument("--offer-days", type=float, default=21.0,
                        help="the feed window plus the margin (a week + 14 days by default)")
    parser.add_argument("--every", type=int, default=1, help="print every Nth day")
    parser.add_argument("--url", default=None, help="a PostgreSQL URL (default: SQLite)")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="a SQLite file to write and keep (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="back-to-back runs of the first week's and the last day's next "
                             "day, each (SQLite)")
    args = parser.parse_args()
    rng = random.Random(2026)
    profiles = make_profiles(args.profiles, make_feed(200, rng), rng)
    subs = subscribers(args.subscribers, profiles, rng)
    policy = Retention(offer_days=args.offer_days, history_days=args.keep_history)
    days: list[dict[str, Any]] = []
    # The first run's feed holds the lookback's papers too, as a real first run's does: a
    # first day of half the papers made a cheaper first run than any other.
    yesterday = day_papers(-1, args.papers, rng)
    opened = Ledger.open(args.ledger) if args.ledger else open_ledger(args.url)
    week = min(7, args.days)
    snapshots = Path(tempfile.mkdtemp(prefix="year-"))
    young = old = None  # (the ledger's copy, the next day's feed, the day)
    with opened as ledger:
        for day in range(args.days):
            today = day_papers(day, args.papers, rng)
            row = one_day(ledger, day, yesterday + today, subs, policy)
            yesterday = today
            days.append(row)
            if day % args.every == 0 or day == args.days - 1:
                print(json.dumps(row), flush=True)
            if args.url is None and day in (week - 1, args.days - 1) and args.repeats:
                copy = snapshots / f"after-{day}.sqlite3"
                sqlite_backup(ledger.conn, copy)
                # The next day's feed from a generator of its own: the series' is untouched.
                taken = (copy, yesterday + day_papers(day + 1, args.papers,
                                                      random.Random(day)), day + 1)
                young, old = (taken, old) if day == week - 1 and young is None else (young,
                                                                                  taken)
    interleaved = compare(young, old, subs, policy, args.repeats) if young and old else None
    shutil.rmtree(snapshots, ignore_errors=True)
    first, last = medians(days[:week]), medians(days[-week:])
    # CPU time is what the ledger costs this process; wall time also counts a busy machine.
    print(json.dumps({
        "summary": True, "days": args.days, "subscribers": args.subscribers,
        "engine": "postgresql" if args.url else "sqlite",
        "first_run_s": days[0]["seconds"], "last_run_s": days[-1]["seconds"],
        "first_run_cpu_s": days[0]["cpu_s"], "last_run_cpu_s": days[-1]["cpu_s"],
        "first_week_median_s": first["seconds"], "last_week_median_s": last["seconds"],
        "last_vs_first_week": round(last["seconds"] / first["seconds"], 3),
        "first_week_cpu_s": first["cpu_s"], "last_week_cpu_s": last["cpu_s"],
        "last_vs_first_week_cpu": round(last["cpu_s"] / first["cpu_s"], 3),
        "first_week_phases": first, "last_week_phases": last, "interleaved": interleaved,
        "size_mb": {str(d["day"]): d["size_mb"] for d in days
                    if d["day"] in (0, 30, 60, 90, 180, 270, args.days - 1)},
        "deliveries": {str(d["day"]): d["deliveries"] for d in days
                       if d["day"] in (0, 30, 60, 90, 180, 270, args.days - 1)}}), flush=True)

if __name__ == "__main__":
    main()
