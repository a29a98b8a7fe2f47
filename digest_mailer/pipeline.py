"""One run: fetch, diff against the ledger, select, render, send, record. The only module that
sees every stage; each stage gets its inputs (time, I/O) passed in."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from digest_mailer.config import WEEKDAYS, Config
from digest_mailer.delivery import Backend, BackendOptions, open_backend
from digest_mailer.errors import DeliveryError, DigestMailerError
from digest_mailer.lock import run_lock
from digest_mailer.message import (
    build_message,
    list_id,
    list_unsubscribe,
    make_message_id,
    unsubscribe_token,
)
from digest_mailer.models import (
    Digest,
    FetchResult,
    RunReport,
    Selection,
    Status,
    Subscriber,
    SubscriberOutcome,
)
from digest_mailer.render import Renderer
from digest_mailer.select import Filter, select
from digest_mailer.sources import Source, SourceSpec, open_source
from digest_mailer.sources.http import HttpFetcher
from digest_mailer.store import Ledger

logger = logging.getLogger(__name__)

# Dry runs and previews work without the secret; their links say so and cannot unsubscribe
# anyone, because real tokens are made with the real secret.
PREVIEW_SECRET = b"digest-mailer preview: not a real unsubscribe secret"
MIN_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class RunOptions:
    dry_run: bool = False
    out_dir: Path | None = None
    source: str | None = None
    source_kind: str | None = None
    run_date: date | None = None
    only: str | None = None  # one subscriber's address (preview)
    ignore_ledger: bool = False  # preview as if nothing had been sent yet
    wait: float | None = 0  # for the run lock: 0 fails at once, None waits as long as it takes


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every message of a run shares."""

    newsletter: str
    sender: str
    envelope_from: str
    reply_to: str | None
    list_id: str
    domain: str
    unsubscribe_url: str
    unsubscribe_mailto: str | None
    secret: bytes

    @classmethod
    def of(cls, config: Config, secret: bytes) -> Envelope:
        nl = config.newsletter
        return cls(newsletter=nl.name, sender=nl.from_,
                   envelope_from=config.delivery.smtp.envelope_from or config.from_address,
                   reply_to=nl.reply_to, list_id=list_id(nl.name, config.from_domain, nl.list_id),
                   domain=config.from_domain, unsubscribe_url=config.unsubscribe.url,
                   unsubscribe_mailto=config.unsubscribe.mailto, secret=secret)


def unsubscribe_secret(config: Config, env: Mapping[str, str], *, dry_run: bool) -> bytes:
    name = config.unsubscribe.secret_env
    value = env.get(name, "")
    if not value:
        if dry_run:
            logger.warning("$%s is not set: preview unsubscribe links use a placeholder token",
                           name)
            return PREVIEW_SECRET
        raise DigestMailerError(
            f"${name} is not set: it signs the one-click unsubscribe links",
            hint=f"export {name}=\"$(python3 -c 'import secrets; print(secrets.token_hex(32))')\""
                 " and keep it: changing it breaks the links already sent")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise DigestMailerError(f"${name} is too short ({len(value)} characters)",
                                hint=f"use at least {MIN_SECRET_BYTES} random characters")
    return value.encode()


def backend_options(config: Config, env: Mapping[str, str], out_dir: Path | None) -> BackendOptions:
    smtp = config.delivery.smtp
    password = ""
    if smtp.username and config.delivery.backend == "smtp":
        password = env.get(smtp.password_env, "")
        if not password:
            raise DigestMailerError(
                f"${smtp.password_env} is not set: delivery.smtp.username is "
                f"{smtp.username!r}, so a password is needed",
                hint=f"export {smtp.password_env}=...; passwords never go in the config file")
        if smtp.security == "none":
            raise DigestMailerError(
                "delivery.smtp: refusing to log in without TLS (security = 'none')",
                hint="use security = 'starttls' or 'ssl'")
    return BackendOptions(
        out_dir=out_dir or config.out_dir, smtp_host=smtp.host, smtp_port=smtp.effective_port,
        smtp_security=smtp.security, smtp_username=smtp.username, smtp_password=password,
        smtp_timeout=smtp.timeout,
        smtp_ca_file=config.resolve(smtp.ca_file) if smtp.ca_file else None)


WEEK = 7


def source_spec(config: Config, options: RunOptions, lookback_days: int) -> SourceSpec:
    if options.source:
        kind = options.source_kind
        if kind is None and "://" in options.source:
            kind = config.source.kind
        return SourceSpec(kind, options.source, lookback_days)
    return SourceSpec(options.source_kind or config.source.kind, config.source_location,
                      lookback_days)


def lookback(config: Config, subscribers: tuple[Subscriber, ...], run_date: date) -> int:
    """The configured window, or a week when a weekly subscriber is due: their email takes the
    best of the week's papers."""
    weekly_due = any(s.frequency == "weekly" and not s.paused and s.due_on(run_date)
                     for s in subscribers)
    return max(config.source.lookback_days, WEEK) if weekly_due else config.source.lookback_days


def today(config: Config, now: datetime) -> date:
    return now.astimezone(ZoneInfo(config.newsletter.timezone)).date()


@contextmanager
def _closing(backend: Backend) -> Iterator[Backend]:
    try:
        yield backend
    finally:
        backend.close()


def run(config: Config, options: RunOptions, *, now: datetime, env: Mapping[str, str],
        on_progress: Callable[[SubscriberOutcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False) -> RunReport:
    """Assemble the parts from the config and do one run; real runs hold the run lock."""
    if options.dry_run:
        return _run(config, options, now=now, env=env, on_progress=on_progress,
                    should_stop=should_stop)
    with run_lock(config.state_path, "digest-mailer run", wait=options.wait):
        return _run(config, options, now=now, env=env, on_progress=on_progress,
                    should_stop=should_stop)


def _run(config: Config, options: RunOptions, *, now: datetime, env: Mapping[str, str],
         on_progress: Callable[[SubscriberOutcome], None] | None,
         should_stop: Callable[[], bool]) -> RunReport:
    dry = options.dry_run
    secret = unsubscribe_secret(config, env, dry_run=dry)
    backend_name = "file" if dry else config.delivery.backend
    bopts = backend_options(config, env, options.out_dir)
    renderer = Renderer(config.templates_dir, config.newsletter.subject)
    subscribers = config.subscribers_view()
    if options.only:
        subscribers = tuple(s for s in subscribers if s.key == options.only.lower())
        if not subscribers:
            raise DigestMailerError(f"{options.only}: not a subscriber in {config.path}",
                                    hint="see `digest-mailer check` for the list")
    run_date = options.run_date or today(config, now)
    spec = source_spec(config, options, lookback(config, subscribers, run_date))
    c = config.source
    with HttpFetcher(timeout=c.timeout, retries=c.retries, max_bytes=c.max_bytes) as http:
        source = open_source(spec, lambda: http)
        opener = Ledger.open_readonly if dry else Ledger.open
        with opener(config.state_path) as ledger, \
                _closing(open_backend(backend_name, bopts)) as backend:
            return run_once(
                subscribers=subscribers, source=source, ledger=ledger, backend=backend,
                renderer=renderer, envelope=Envelope.of(config, secret), now=now,
                run_date=run_date, ignore_ledger=options.ignore_ledger,
                on_progress=on_progress, should_stop=should_stop)


def run_once(*, subscribers: tuple[Subscriber, ...], source: Source, ledger: Ledger,
             backend: Backend, renderer: Renderer, envelope: Envelope, now: datetime,
             run_date: date, ignore_ledger: bool = False,
             on_progress: Callable[[SubscriberOutcome], None] | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> RunReport:
    record = not ledger.readonly
    run_id = None
    if record:
        run_id = ledger.start_run(now, run_date, source.origin)
    try:
        fetched = source.fetch(run_date)
    except DigestMailerError:
        if run_id is not None:
            ledger.finish_run(run_id, now, fetched=0, sent=0, failed=0, outcome="source failed")
        raise
    logger.info("fetched %d papers from %s (%d skipped)", len(fetched.papers), fetched.origin,
                fetched.skipped)
    if record and fetched.papers:
        ledger.remember(fetched.papers, now)
    outcomes: list[SubscriberOutcome] = []
    stopped: str | None = None
    for sub in subscribers:
        if not stopped and should_stop():
            stopped = "the run was asked to stop"
        if stopped:
            outcome = SubscriberOutcome(sub.email, Status.NOT_ATTEMPTED, detail=stopped)
        elif sub.paused:
            outcome = SubscriberOutcome(sub.email, Status.PAUSED, detail="pause = true")
        elif not sub.due_on(run_date):
            outcome = SubscriberOutcome(sub.email, Status.NOT_DUE,
                                        detail=f"weekly, next on {WEEKDAYS[sub.weekday]}")
        else:
            offered = frozenset() if ignore_ledger else ledger.offered_ids(sub.email)
            selection = select(sub, fetched.papers, offered, Filter.of(sub))
            outcome, stopped = _deliver(selection, fetched, ledger=ledger, backend=backend,
                                        renderer=renderer, envelope=envelope, now=now,
                                        run_date=run_date, run_id=run_id, record=record)
        outcomes.append(outcome)
        logger.info("%s: %s %s", outcome.email, outcome.status, outcome.detail)
        if on_progress:
            on_progress(outcome)
    report = RunReport(run_date=run_date, started_at=now, finished_at=datetime.now(now.tzinfo),
                       origin=fetched.origin, fetched=len(fetched.papers),
                       skipped=fetched.skipped, skipped_reasons=fetched.skipped_reasons,
                       outcomes=tuple(outcomes), dry_run=not record, run_id=run_id,
                       stopped=stopped)
    if run_id is not None:
        ledger.finish_run(run_id, report.finished_at, fetched=report.fetched,
                          sent=report.delivered, failed=report.failed,
                          outcome="stopped" if stopped else
                          "failures" if report.failed else "ok")
    return report


def _deliver(selection: Selection, fetched: FetchResult, *, ledger: Ledger, backend: Backend,
             renderer: Renderer, envelope: Envelope, now: datetime, run_date: date,
             run_id: int | None, record: bool) -> tuple[SubscriberOutcome, str | None]:
    """One subscriber's email; the second value says why the whole run must stop, if it must."""
    sub = selection.subscriber
    if not selection.matches:
        if selection.matched_total == 0:
            why = "no paper matches" if fetched.papers else "the feed is empty"
            return SubscriberOutcome(sub.email, Status.NO_MATCH, detail=why), None
        return SubscriberOutcome(sub.email, Status.NOTHING_NEW,
                                 detail=f"all {selection.matched_total} matching papers were "
                                        "offered before"), None
    token = unsubscribe_token(envelope.secret, sub.email)
    url = envelope.unsubscribe_url.replace("{token}", token)
    rendered = renderer.render(Digest(newsletter=envelope.newsletter, run_date=run_date,
                                      subscriber=sub, matches=selection.matches,
                                      over_cap=selection.over_cap, unsubscribe_url=url))
    message = build_message(
        rendered, subscriber=sub, sender=envelope.sender, envelope_from=envelope.envelope_from,
        reply_to=envelope.reply_to, list_id_header=envelope.list_id,
        unsubscribe=list_unsubscribe(url, envelope.unsubscribe_mailto, token),
        message_id=make_message_id(envelope.domain, now), when=now, run_date=run_date)
    try:
        receipt = backend.send(message)
    except DeliveryError as e:
        failed = SubscriberOutcome(sub.email, Status.FAILED, len(selection.matches), e.message)
        return failed, (e.message if e.fatal else None)
    if record:
        ledger.record_delivery(run_id=run_id, subscriber=sub.email,
                               message_id=message.message_id, subject=message.subject,
                               sent_at=datetime.now(now.tzinfo),
                               included=[m.paper.id for m in selection.matches],
                               offered=selection.offered)
    extra = f", {selection.over_cap} more over the cap" if selection.over_cap else ""
    return SubscriberOutcome(
        sub.email, Status.WRITTEN if backend.dry_run else Status.SENT, len(selection.matches),
        detail=f"{len(selection.matches)} paper(s){extra}", message_id=message.message_id,
        location=receipt.location), None

