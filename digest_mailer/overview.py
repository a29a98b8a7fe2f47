"""Read-only views for operators: what `explain` and `status` say (`check`: checkup.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from digest_mailer.advice import topic_advice
from digest_mailer.audience import Member, everyone, members
from digest_mailer.config import WEEKDAYS, Config
from digest_mailer.cron import next_fire, parse_cron
from digest_mailer.errors import DigestMailerError
from digest_mailer.models import MessageState
from digest_mailer.pipeline import RunOptions, lookback, retention_of, source_spec, today
from digest_mailer.select import Explanation, explain
from digest_mailer.sources import open_source
from digest_mailer.sources.http import HttpFetcher
from digest_mailer.store import Ledger
from digest_mailer.textmatch import Normalizer


@dataclass(frozen=True, slots=True)
class SubscriberExplanation:
    email: str
    note: str
    papers: tuple[Explanation, ...]
    warnings: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()  # the topics explained (tried ones, with --topic)


def explain_subscriber(config: Config, options: RunOptions, *, now: datetime,
                       topics: Sequence[str] = ()) -> SubscriberExplanation:
    """Every paper of the current feed, kept or dropped for one subscriber, and why; with
    `topics`, as if the subscriber's topics were those (to try them before saving)."""
    matches = [s for s in everyone(config) if s.key == (options.only or "").lower()]
    if not matches:
        raise DigestMailerError(f"{options.only}: not a subscriber in {config.path} nor in "
                                "the store",
                                hint="see `digest-mailer subscribers list`")
    sub = matches[0]
    if topics:
        for t in topics:
            if not Normalizer.written(t):
                raise DigestMailerError(f"--topic {t.strip()!r} has no letters or digits, so "
                                        "it matches nothing",
                                        hint="give a word or phrase: --topic 'diffusion models'")
        sub = replace(sub, topics=tuple(dict.fromkeys(" ".join(t.split()) for t in topics)))
    run_date = options.run_date or today(config, now)
    spec = source_spec(config, options, lookback(config, (sub,), run_date))
    c = config.source
    with HttpFetcher(timeout=c.timeout, retries=c.retries, max_bytes=c.max_bytes) as http:
        fetched = open_source(spec, lambda: http).fetch(run_date)
    with Ledger.open_readonly(config.state_target) as ledger:
        # What was offered since the feed's papers were first seen: nothing before that can
        # have offered them.
        seen = ledger.first_seen([p.id for p in fetched.papers])
        offered = ledger.offer_log(sub.email, since=min(seen.values(), default=now))
    note = ""
    if sub.paused:
        note = "paused (pause = true, or by their own preferences): nothing is sent"
    elif not sub.due_on(run_date):
        note = f"weekly on {WEEKDAYS[sub.weekday]}: nothing is sent on {run_date:%A}"
    return SubscriberExplanation(sub.email, note, tuple(explain(sub, fetched.papers, offered)),
                                 tuple(topic_advice(config, [sub], fetched.papers)), sub.topics)


def status(config: Config, *, now: datetime, env: Mapping[str, str]) -> dict[str, Any]:
    from digest_mailer.store.ops import size_bytes

    with Ledger.open_readonly(config.state_target) as ledger:
        size = size_bytes(ledger)
        counts = ledger.counts()
        runs = ledger.runs(limit=5)
        suppressed = ledger.suppressions()
        outbox = ledger.outbox.counts()
        problems = ledger.outbox.problems()
    found = members(config)
    subs = [m.subscriber for m in found]
    tz = config.schedule_timezone
    upcoming = next_fire(parse_cron(config.schedule.cron, tz), now)
    return {
        "ledger": config.state_target.label,
        "size_bytes": size,
        "retention": retention_of(config).describe(),
        **counts,
        "subscribers": {
            "active": sum(1 for s in subs if not s.paused and s.key not in suppressed),
            "paused": sum(1 for s in subs if s.paused),
            "suppressed": sum(1 for s in subs if s.key in suppressed)},
        "subscribers_by_source": by_source(found, suppressed),
        "signups": signup_counts(config, now),
        "suppressed": {email: {"reason": r, "since": since, "detail": d}
                       for email, (r, since, d) in suppressed.items()},
        "outbox": {"waiting": sum(n for state, n in outbox.items()
                                  if MessageState(state).open),
                   **outbox},
        "problems": [{"at": at, "to": to, "state": state, "why": why}
                     for at, to, state, why in problems],
        "schedule": f"{config.schedule.cron} ({tz})",
        "next_run": upcoming.isoformat() if upcoming else None,
        "last_runs": [r._asdict() for r in runs],
        "run_lock": run_lock_holder(config),
    }


def by_source(found: list[Member], suppressed: Mapping[str, tuple[str, str, str]]
              ) -> dict[str, dict[str, int]]:
    """Per source (config, config+override, store): confirmed and mailed, paused,
    unsubscribed, suppressed (bounces, or by the operator)."""
    out: dict[str, dict[str, int]] = {}
    for m in found:
        row = out.setdefault(m.source, {"active": 0, "paused": 0, "unsubscribed": 0,
                                        "suppressed": 0})
        why = suppressed.get(m.subscriber.key)
        if why is not None:
            row["unsubscribed" if why[0] == "unsubscribed" else "suppressed"] += 1
        elif m.subscriber.paused:
            row["paused"] += 1
        else:
            row["active"] += 1
    return out


def signup_counts(config: Config, now: datetime) -> dict[str, int]:
    from digest_mailer.signup import CONFIRM_DAYS
    from digest_mailer.store.selfservice import peek

    empty = dict.fromkeys(("pending", "requested_last_day", "requested_last_week",
                           "confirmed_last_day", "confirmed_last_week"), 0)
    return peek(config.state_target,
                lambda store: store.signup_counts(now, timedelta(CONFIRM_DAYS)), empty)


def run_lock_holder(config: Config) -> str | None:
    """Who holds the run lock now: on PostgreSQL as the server sees it (any host)."""
    target = config.state_target
    if target.kind == "postgresql":
        from digest_mailer.pglock import holder

        return holder(target)
    from digest_mailer.lock import holder_of

    return holder_of(config.state_path)
