"""A short simulated stretch of daily runs (bench/year.py's day, the ledger's part of a run):
once the windows have passed, the ledger stops growing, on both engines."""

from __future__ import annotations

import random
import sys

from conftest import REPO
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.retention import Retention

sys.path.insert(0, str(REPO / "bench"))

import year

from bench import make_feed, make_profiles


def test_a_month_of_runs_levels_off_after_the_windows(store_target: StoreTarget) -> None:
    rng = random.Random(11)
    subs = year.subscribers(100, make_profiles(40, make_feed(100, rng), rng), rng)
    policy = Retention(offer_days=6, history_days=10)
    days = []
    yesterday: list[year.Paper] = []
    with Ledger.open(store_target) as ledger:
        for day in range(30):
            today = year.day_papers(day, 15, rng)
            days.append(year.one_day(ledger, day, yesterday + today, subs, policy))
            yesterday = today
    assert all(d["sent"] > 30 for d in days)
    # Sent-email records (which hold the offers) level off after keep_history: the last
    # week holds no more than the week after it (while before it they grew).

    def week(key: str, at: int) -> float:
        return sum(d[key] for d in days[at:at + 7]) / 7

    assert week("deliveries", 23) <= 1.1 * week("deliveries", 15)
    assert days[9]["deliveries"] > 2 * days[2]["deliveries"]
    if store_target.kind == "sqlite":  # a SQLite file reuses the space it freed
        assert days[29]["size_mb"] <= 1.15 * days[15]["size_mb"] + 0.5
