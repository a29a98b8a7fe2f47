"""Read-only views for operators: what `check`, `explain` and `status` say."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from digest_mailer.config import WEEKDAYS, Config
from digest_mailer.cron import next_fire, parse_cron
from digest_mailer.errors import DigestMailerError
from digest_mailer.models import MessageState
from digest_mailer.pipeline import RunOptions, lookback, source_spec, today
from digest_mailer.select import Explanation, explain
from digest_mailer.sources import open_source
from digest_mailer.sources.http import HttpFetcher
from digest_mailer.store import Ledger


@dataclass(frozen=True, slots=True)
class SubscriberExplanation:
    email: str
    note: str
    papers: tuple[Explanation, ...]


def explain_subscriber(config: Config, options: RunOptions, *, now: datetime
                       ) -> SubscriberExplanation:
    """Every paper of the current feed, kept or dropped for one subscriber, and why."""
    matches = [s for s in config.subscribers_view() if s.key == (options.only or "").lower()]
    if not matches:
        raise DigestMailerError(f"{options.only}: not a subscriber in {config.path}",
                                hint="see `digest-mailer subscribers list`")
    sub = matches[0]
    run_date = options.run_date or today(config, now)
    spec = source_spec(config, options, lookback(config, (sub,), run_date))
    c = config.source
    with HttpFetcher(timeout=c.timeout, retries=c.retries, max_bytes=c.max_bytes) as http:
        fetched = open_source(spec, lambda: http).fetch(run_date)
    with Ledger.open_readonly(config.state_path) as ledger:
        offered = ledger.offer_log(sub.email)
    note = ""
    if sub.paused:
        note = "paused (pause = true): nothing is sent while it is set"
    elif not sub.due_on(run_date):
        note = f"weekly on {WEEKDAYS[sub.weekday]}: nothing is sent on {run_date:%A}"
    return SubscriberExplanation(sub.email, note,
                                 tuple(explain(sub, fetched.papers, offered)))


def status(config: Config, *, now: datetime, env: Mapping[str, str]) -> dict[str, Any]:
    with Ledger.open_readonly(config.state_path) as ledger:
        counts = ledger.counts()
        runs = ledger.runs(limit=5)
        suppressed = ledger.suppressions()
        outbox = ledger.outbox.counts()
        problems = ledger.outbox.problems()
    subs = config.subscribers_view()
    tz = config.schedule_timezone
    upcoming = next_fire(parse_cron(config.schedule.cron, tz), now)
    return {
        "ledger": str(config.state_path),
        **counts,
        "subscribers": {
            "active": sum(1 for s in subs if not s.paused and s.key not in suppressed),
            "paused": sum(1 for s in subs if s.paused),
            "suppressed": sum(1 for s in subs if s.key in suppressed)},
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
    }


def describe(config: Config, env: Mapping[str, str]) -> list[str]:
    """What `check` says: the config is valid, and what it sets up."""
    subs = config.subscribers_view()
    everything = sum(1 for s in subs if not s.topics and not s.authors)
    src = config.source
    smtp = config.delivery.smtp
    if config.delivery.backend == "smtp":
        login = f", login as {smtp.username!r}" if smtp.username else ", no login"
        delivery = f"smtp {smtp.host}:{smtp.effective_port} ({smtp.security}{login})"
    else:
        delivery = f"file, under {config.out_dir}"
    state = config.state_path
    lines = [
        f"{config.path}: OK",
        f"newsletter: {config.newsletter.name!r} from {config.newsletter.from_}",
        f"subscribers: {len(subs)} ({len(subs) - everything} with topic or author filters, "
        f"{everything} taking every paper)",
        f"source: {src.kind} at {config.source_location} ({src.lookback_days} day(s) per run)",
        f"delivery: {delivery}",
        f"ledger: {state}" + ("" if state.exists() else " (created by the first run)"),
    ]
    for name, why in ((config.unsubscribe.secret_env, "unsubscribe links"),
                      (smtp.password_env if smtp.username else "", "the SMTP password")):
        if name and not env.get(name):
            lines.append(f"warning: ${name} is not set ({why}); real runs need it")
    if not subs:
        lines.append("warning: no [[subscribers]]: runs will send nothing")
    return lines
