"""One run: fetch, diff against the ledger, select, render, send, record. The only module that
sees every stage; each stage gets its inputs (time, I/O) passed in."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from digest_mailer import credentials
from digest_mailer.compose import Composer
from digest_mailer.config import WEEKDAYS, Config
from digest_mailer.delivery import Backend, BackendOptions, open_backend
from digest_mailer.dispatch import Dispatcher, Policy
from digest_mailer.errors import DigestMailerError
from digest_mailer.lock import run_lock
from digest_mailer.message import (
    DkimSigner,
    Shared,
    list_id,
)
from digest_mailer.models import (
    FetchResult,
    Paper,
    RunReport,
    Status,
    Subscriber,
    SubscriberOutcome,
)
from digest_mailer.preflight import ensure_runnable
from digest_mailer.render import Renderer
from digest_mailer.select import profile_key
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
    signer: DkimSigner | None = None

    def composer(self, renderer: Renderer, papers: Sequence[Paper], run_date: date,
                 ledger: Ledger | None, now: datetime) -> Composer:
        shared = Shared(sender=self.sender, envelope_from=self.envelope_from,
                        reply_to=self.reply_to, list_id=self.list_id,
                        mailto=self.unsubscribe_mailto, when=now, run_date=run_date,
                        signer=self.signer)
        return Composer(renderer=renderer, shared=shared, newsletter=self.newsletter,
                        domain=self.domain, unsubscribe_url=self.unsubscribe_url,
                        secret=self.secret, papers=papers, ledger=ledger)

    @classmethod
    def of(cls, config: Config, secret: bytes) -> Envelope:
        nl = config.newsletter
        dk = config.delivery.dkim
        signer = DkimSigner(dk.domain, dk.selector, credentials.read_private_file(
            config.resolve(dk.key_file), "DKIM key")) if dk else None
        return cls(newsletter=nl.name, sender=nl.from_,
                   envelope_from=config.delivery.smtp.envelope_from or config.from_address,
                   reply_to=nl.reply_to, list_id=list_id(nl.name, config.from_domain, nl.list_id),
                   domain=config.from_domain, unsubscribe_url=config.unsubscribe.url,
                   unsubscribe_mailto=config.unsubscribe.mailto, secret=secret,
                   signer=signer)


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
        file = config.resolve(smtp.password_file) if smtp.password_file else None
        password = credentials.password(env, smtp.password_env, file)
        if not password:
            raise DigestMailerError(
                f"${smtp.password_env} is not set: delivery.smtp.username is "
                f"{smtp.username!r}, so a password is needed",
                hint=f"export {smtp.password_env}=... or set delivery.smtp.password_file; "
                     "passwords never go in the config file")
        if smtp.security == "none":
            raise DigestMailerError(
                "delivery.smtp: refusing to log in without TLS (security = 'none')",
                hint="use security = 'starttls' or 'ssl'")
    return BackendOptions(
        out_dir=out_dir or config.out_dir, smtp_host=smtp.host, smtp_port=smtp.effective_port,
        smtp_security=smtp.security, smtp_username=smtp.username, smtp_password=password,
        smtp_timeout=smtp.timeout, smtp_rate_limit=smtp.rate_limit,
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


def stoppable_sleep(should_stop: Callable[[], bool]) -> Callable[[float], bool]:
    """A sleep that ends early when the run is asked to stop; says whether it was."""

    def wait(seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not should_stop():
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.2))
        return True

    return wait


def today(config: Config, now: datetime) -> date:
    return now.astimezone(ZoneInfo(config.newsletter.timezone)).date()


def run(config: Config, options: RunOptions, *, now: datetime, env: Mapping[str, str],
        on_progress: Callable[[SubscriberOutcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False) -> RunReport:
    """Assemble the parts from the config and do one run; real runs hold the run lock."""
    ensure_runnable(config, env, now=now, source_given=bool(options.source),
                    dry_run=options.dry_run)
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
    envelope = Envelope.of(config, secret)
    subscribers = config.subscribers_view()
    if options.only:
        subscribers = tuple(s for s in subscribers if s.key == options.only.lower())
        if not subscribers:
            raise DigestMailerError(f"{options.only}: not a subscriber in {config.path}",
                                    hint="see `digest-mailer subscribers list`")
    run_date = options.run_date or today(config, now)
    spec = source_spec(config, options, lookback(config, subscribers, run_date))
    c = config.source
    with HttpFetcher(timeout=c.timeout, retries=c.retries, max_bytes=c.max_bytes) as http:
        source = open_source(spec, lambda: http)
        opener = Ledger.open_readonly if dry else Ledger.open
        with opener(config.state_path) as ledger, \
                closing(open_backend(backend_name, bopts)) as backend:
            d = config.delivery
            senders = d.smtp.connections if backend_name == "smtp" else 0
            return run_once(
                subscribers=subscribers, source=source, ledger=ledger, backend=backend,
                renderer=renderer, envelope=envelope, now=now,
                run_date=run_date, ignore_ledger=options.ignore_ledger,
                policy=Policy(retry_attempts=d.retry_attempts, retry_delay=d.retry_delay,
                              max_hard_failures=d.max_hard_failures),
                on_progress=on_progress, should_stop=should_stop,
                wait=stoppable_sleep(should_stop), senders=senders,
                open_sender_backend=lambda: open_backend(backend_name, bopts))


def run_once(*, subscribers: tuple[Subscriber, ...], source: Source, ledger: Ledger,
             backend: Backend, renderer: Renderer, envelope: Envelope, now: datetime,
             run_date: date, ignore_ledger: bool = False, policy: Policy | None = None,
             on_progress: Callable[[SubscriberOutcome], None] | None = None,
             should_stop: Callable[[], bool] = lambda: False,
             wait: Callable[[float], bool] | None = None, senders: int = 0,
             open_sender_backend: Callable[[], Backend] | None = None) -> RunReport:
    record = not ledger.readonly
    run_id = ledger.start_run(now, run_date, source.origin) if record else None
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
    dispatcher = Dispatcher(ledger, backend, run_id, clock=lambda: datetime.now(now.tzinfo),
                            wait=wait or (lambda seconds: should_stop()),
                            policy=policy or Policy(), senders=senders,
                            open_backend=open_sender_backend)
    composer = envelope.composer(renderer, fetched.papers, run_date,
                                 ledger if record else None, now)

    def done(outcome: SubscriberOutcome) -> SubscriberOutcome:
        logger.info("%s: %s %s", outcome.email, outcome.status, outcome.detail)
        if on_progress:
            on_progress(outcome)
        return outcome

    # A message's outcome may come later than its subscriber's turn (from a sender process, or
    # a retry); the last one heard for a Message-ID is final.
    latest: dict[str, SubscriberOutcome] = {}
    notes: dict[str, str] = {}

    def absorb(outcomes: list[SubscriberOutcome]) -> None:
        for outcome in outcomes:
            if outcome.message_id:
                latest[outcome.message_id] = done(outcome)

    slots: list[SubscriberOutcome | str] = []
    if record:
        for message_id, outcome in dispatcher.leftovers(
                lambda entry: composer.rebuild(entry, envelope.signer)):
            notes[message_id] = "left by an earlier run"
            slots.append(message_id)
            absorb([outcome] if outcome else [])
    waiting = ledger.outbox.waiting_subscribers()
    # Subscribers who share filters go one after another, so each distinct digest is rendered
    # once while it is in the composer's bounded cache; the report keeps the config's order.
    order = sorted(range(len(subscribers)), key=lambda i: batch_key(subscribers[i]))
    own: dict[int, SubscriberOutcome | str] = {}
    for i in order:
        if not dispatcher.stopped and should_stop():
            dispatcher.stopped = "the run was asked to stop"
        result = _subscriber(
            subscribers[i], fetched, ledger=ledger, dispatcher=dispatcher, composer=composer,
            now=now, run_date=run_date, ignore_ledger=ignore_ledger, waiting=waiting)
        if isinstance(result, tuple):
            message_id, note, outcome = result
            notes[message_id] = note
            own[i] = message_id
            if outcome is not None:
                absorb([outcome])
        else:
            own[i] = done(result)
        absorb(dispatcher.poll())
    slots += [own[i] for i in range(len(subscribers))]
    absorb(dispatcher.finish())
    outcomes = [_final(slot, latest, notes) for slot in slots]
    stopped = dispatcher.stopped
    report = RunReport(run_date=run_date, started_at=now, finished_at=datetime.now(now.tzinfo),
                       origin=fetched.origin, fetched=len(fetched.papers),
                       skipped=fetched.skipped, skipped_reasons=fetched.skipped_reasons,
                       outcomes=tuple(outcomes), dry_run=not record, run_id=run_id,
                       stopped=stopped)
    logger.info("%d distinct digest(s) rendered in %.1fs", composer.rendered_sets,
                composer.render_seconds)
    if run_id is not None:
        ledger.outbox.prune_sets()
        ledger.finish_run(run_id, report.finished_at, fetched=report.fetched,
                          sent=report.delivered, failed=report.failed,
                          outcome="stopped" if stopped else
                          "failures" if report.failed else "ok")
    return report


def _final(slot: SubscriberOutcome | str, latest: dict[str, SubscriberOutcome],
           notes: dict[str, str]) -> SubscriberOutcome:
    if not isinstance(slot, str):
        return slot
    outcome = latest[slot]
    note = notes.get(slot)
    if note and (outcome.status in (Status.SENT, Status.WRITTEN) or note.startswith("left")):
        return replace(outcome, detail=f"{outcome.detail}, {note}")
    return outcome


def batch_key(sub: Subscriber) -> tuple[object, ...]:
    return (*profile_key(sub), sub.max_papers, bool(sub.name))


def _subscriber(sub: Subscriber, fetched: FetchResult, *, ledger: Ledger,
                dispatcher: Dispatcher, composer: Composer, now: datetime, run_date: date,
                ignore_ledger: bool, waiting: frozenset[str]
                ) -> SubscriberOutcome | tuple[str, str, SubscriberOutcome | None]:
    """One subscriber's share of the run: why nothing goes out, or their one email, as its
    Message-ID, a note for the report, and its outcome when it is already known."""
    if dispatcher.stopped:
        return SubscriberOutcome(sub.email, Status.NOT_ATTEMPTED, detail=dispatcher.stopped)
    if sub.paused:
        return SubscriberOutcome(sub.email, Status.PAUSED, detail="pause = true")
    if not sub.due_on(run_date):
        return SubscriberOutcome(sub.email, Status.NOT_DUE,
                                 detail=f"weekly, next on {WEEKDAYS[sub.weekday]}")
    # Read at each subscriber: an unsubscribe in the middle of a run counts from the next one.
    suppressed = ledger.suppressed(sub.email)
    if suppressed:
        return SubscriberOutcome(sub.email, Status.SUPPRESSED, detail=suppressed)
    offered = frozenset() if ignore_ledger else ledger.offered_ids(
        sub.email, check_outbox=sub.key in waiting)
    selection = composer.select(sub, offered)
    if not selection.matches:
        if selection.matched_total == 0:
            why = "no paper matches" if fetched.papers else "the feed is empty"
            return SubscriberOutcome(sub.email, Status.NO_MATCH, detail=why)
        return SubscriberOutcome(sub.email, Status.NOTHING_NEW,
                                 detail=f"all {selection.matched_total} matching papers were "
                                        "offered before")
    message = composer.compose(selection, run_date, now, want_html=dispatcher.backend.dry_run)
    outcome = dispatcher.send(message, [m.paper.id for m in selection.matches],
                              selection.offered)
    note = f"{selection.over_cap} more over the cap" if selection.over_cap else ""
    return message.message_id, note, outcome
