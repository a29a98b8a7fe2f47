"""One run: fetch, diff against the ledger, select, render, send, record. The only module that
sees every stage; each stage gets its inputs (time, I/O) passed in."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from digest_mailer import credentials
from digest_mailer.audience import everyone
from digest_mailer.compose import Composer, batch_key, decide
from digest_mailer.config import Config
from digest_mailer.config_values import DAY
from digest_mailer.delivery import BackendOptions, open_backend
from digest_mailer.dispatch import Policy, SenderSpec
from digest_mailer.errors import DigestMailerError
from digest_mailer.heap import settled
from digest_mailer.lease import holder_dead
from digest_mailer.lock import wait_for_senders
from digest_mailer.message import (
    DkimSigner,
    Shared,
    list_id,
)
from digest_mailer.models import (
    FetchResult,
    MessageState,
    Paper,
    RunReport,
    RunState,
    Status,
    Subscriber,
    SubscriberOutcome,
)
from digest_mailer.pglock import held_run_lock
from digest_mailer.preflight import ensure_runnable
from digest_mailer.render import Renderer
from digest_mailer.senders import Senders, sender_tag
from digest_mailer.sources import Source, SourceSpec, open_source
from digest_mailer.sources.http import HttpFetcher
from digest_mailer.store import Ledger
from digest_mailer.store.outbox import Fate, Queued
from digest_mailer.store.retention import Retention, prune
from digest_mailer.truth import Roster

logger = logging.getLogger(__name__)

# Dry runs and previews work without the secret; their links say so and cannot unsubscribe
# anyone, because real tokens are made with the real secret.
PREVIEW_SECRET = b"digest-mailer preview: not a real unsubscribe secret"
MIN_SECRET_BYTES = 16
READING = "reading the feed: %s"  # where a run's end-to-end time starts (bench/bench.py)


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
    compose_only: bool = False  # leave the sending to `send` workers


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


def today(config: Config, now: datetime) -> date:
    return now.astimezone(ZoneInfo(config.newsletter.timezone)).date()


def run(config: Config, options: RunOptions, *, now: datetime, env: Mapping[str, str],
        on_progress: Callable[[SubscriberOutcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False) -> RunReport:
    """Assemble the parts from the config and do one run; real runs hold the run lock, and
    start only once no sender of an earlier run is alive."""
    with settled():  # the config and what the process loaded live through the run
        ensure_runnable(config, env, now=now, source_given=bool(options.source),
                        dry_run=options.dry_run)
        if options.dry_run:
            return _run(config, options, now=now, env=env, on_progress=on_progress,
                        should_stop=should_stop)
        with held_run_lock(config.state_target, config.state_path, "run", wait=options.wait):
            wait_for_senders(config.state_path, config.delivery.smtp.timeout + 10)
            return _run(config, options, now=now, env=env, on_progress=on_progress,
                        should_stop=should_stop)


def _run(config: Config, options: RunOptions, *, now: datetime, env: Mapping[str, str],
         on_progress: Callable[[SubscriberOutcome], None] | None,
         should_stop: Callable[[], bool]) -> RunReport:
    dry = options.dry_run
    secret = unsubscribe_secret(config, env, dry_run=dry)
    backend_name = "file" if dry else config.delivery.backend
    bopts = backend_options(config, env, options.out_dir)
    envelope = Envelope.of(config, secret)
    d = config.delivery
    sender = None if dry else SenderSpec(
        ledger=str(config.state_path), run_id=0, backend=backend_name, options=bopts,
        policy=Policy(retry_attempts=d.retry_attempts, retry_delay=d.retry_delay,
                      max_hard_failures=d.max_hard_failures),
        signer=envelope.signer, roster=Roster.of_config(config), timeout=d.smtp.timeout,
        log_level=logging.getLogger().getEffectiveLevel(), store=config.state_target,
        lease=d.lease)
    connections = d.smtp.connections if backend_name == "smtp" else 0
    # Sender processes start first, to import while the run prepares, opens the ledger and
    # reads the feed; they wait for its number (Senders.begin).
    early = Senders(sender, connections, early=True) \
        if sender is not None and connections > 0 and not options.compose_only else None
    try:
        renderer = Renderer(config.templates_dir, config.newsletter.subject)
        subscribers = everyone(config)
        if options.only:
            subscribers = tuple(s for s in subscribers if s.key == options.only.lower())
            if not subscribers:
                raise DigestMailerError(f"{options.only}: not a subscriber in {config.path} "
                                        "nor in the store",
                                        hint="see `digest-mailer subscribers list`")
        run_date = options.run_date or today(config, now)
        spec = source_spec(config, options, lookback(config, subscribers, run_date))
        c = config.source
        with HttpFetcher(timeout=c.timeout, retries=c.retries, max_bytes=c.max_bytes) as http:
            source = open_source(spec, lambda: http)
            if sender is None:
                with Ledger.open_readonly(config.state_target) as ledger, \
                        closing(open_backend(backend_name, bopts)) as backend:
                    from digest_mailer.preview import preview_once

                    return preview_once(subscribers=subscribers, source=source,
                                        ledger=ledger, backend=backend, renderer=renderer,
                                        envelope=envelope, now=now, run_date=run_date,
                                        ignore_ledger=options.ignore_ledger,
                                        on_progress=on_progress)
            with Ledger.open(config.state_target) as ledger:
                return run_once(subscribers=subscribers, source=source, ledger=ledger,
                                sender=sender, connections=connections, renderer=renderer,
                                envelope=envelope, now=now, run_date=run_date,
                                on_progress=on_progress, should_stop=should_stop,
                                retention=retention_of(config),
                                compose_only=options.compose_only, early=early)
    finally:
        if early is not None:
            early.end()  # ended already; or never begun; or begun, with a run's wait cut short


def retention_of(config: Config) -> Retention:
    """The ledger's retention policy: the offer window is the longest feed window (a week, for
    weekly digests, at least) plus the margin; the rest is kept for keep_history, and at
    least the offer window."""
    st = config.state
    return Retention(offer_days=max(config.source.lookback_days, WEEK) + st.offer_margin / DAY,
                     history_days=st.keep_history / DAY)


@dataclass
class _Slot:
    """One line of the report: an outcome known at once, or a message whose fate the outbox
    will tell."""

    email: str
    outcome: SubscriberOutcome | None = None
    message_id: str = ""
    note: str = ""


def run_once(*, subscribers: tuple[Subscriber, ...], source: Source, ledger: Ledger,
             sender: SenderSpec, connections: int, renderer: Renderer, envelope: Envelope,
             now: datetime, run_date: date,
             on_progress: Callable[[SubscriberOutcome], None] | None = None,
             should_stop: Callable[[], bool] = lambda: False,
             retention: Retention | None = None, compose_only: bool = False,
             early: Senders | None = None) -> RunReport:
    """A real run. The composer writes each message into the outbox; the senders send from
    it (`compose_only`: `send` workers do, and the report says what waits for them). The
    report reads every message's fate back from the outbox. At its end, what the retention
    policy no longer keeps is pruned. `early`: senders started before the run, waiting for
    its number (the caller stops them if the run ends before they begin)."""
    run_id = ledger.start_run(now, run_date, source.origin)
    senders: Senders | None = None
    own = sender_tag(replace(sender, run_id=run_id))  # how this run's senders are named
    try:
        try:
            logger.debug(READING, source.origin)
            fetched = source.fetch(run_date)
        except DigestMailerError as e:
            ledger.finish_run(run_id, datetime.now(now.tzinfo), fetched=0, sent=0, failed=0,
                              outcome=RunState.SOURCE_FAILED, cause=e.message)
            run_id = 0  # recorded: nothing more to say about it
            raise
        logger.info("fetched %d papers from %s (%d skipped)", len(fetched.papers),
                    fetched.origin, fetched.skipped)
        if fetched.papers:
            ledger.remember(fetched.papers, now)
        slots = [_Slot(e.recipient, message_id=e.message_id, note="left by an earlier run")
                 for e in ledger.outbox.adopt(run_id, dead=holder_dead)]
        if early is not None:
            senders = early  # from here on, the run's own: stopped and waited for below
            early.begin(run_id)
        elif not compose_only:
            senders = Senders(replace(sender, run_id=run_id), connections)
        composer = envelope.composer(renderer, fetched.papers, run_date, ledger, now)
        stopped = _compose(subscribers, fetched, ledger=ledger, composer=composer,
                           senders=senders, slots=slots, run_id=run_id, now=now,
                           run_date=run_date, on_progress=on_progress, should_stop=should_stop)
        if senders is not None:
            senders.composed()
            senders.wait(ledger, should_stop)
        stopped = stopped or should_stop()
    except BaseException as e:
        if senders is not None:
            senders.stop()
            with contextlib.suppress(BaseException):
                senders.wait(ledger, lambda: True)
        if run_id:  # how it ended, whatever ended it (the ledger itself may be the trouble)
            with contextlib.suppress(BaseException):
                ledger.outbox.park(run_id, own)
                ledger.finish_run(run_id, datetime.now(now.tzinfo), fetched=0, sent=0,
                                  failed=0, outcome=RunState.CRASHED,
                                  cause=f"{type(e).__name__}: {e}"[:500])
        raise
    if not compose_only:
        ledger.outbox.park(run_id, own)
    control = ledger.run_control(run_id)
    fates = ledger.outbox.fates(run_id)
    outcomes = tuple(_outcome(slot, fates, compose_only) for slot in slots)
    state, cause = RunState.OK, None
    if stopped:
        state, cause = RunState.STOPPED, "the run was asked to stop"
    elif control.blocked:
        state, cause = RunState.BLOCKED, control.cause
    elif senders is not None and senders.died:
        state, cause = RunState.CRASHED, f"sender(s) died: {', '.join(senders.died)}"
    report = RunReport(run_date=run_date, started_at=now, finished_at=datetime.now(now.tzinfo),
                       origin=fetched.origin, fetched=len(fetched.papers),
                       skipped=fetched.skipped, skipped_reasons=fetched.skipped_reasons,
                       outcomes=outcomes, run_id=run_id, stopped=cause,
                       state=RunState.FAILURES if state is RunState.OK and any(
                           o.status in (Status.FAILED, Status.DEFERRED, Status.PENDING)
                           and not (compose_only and o.status is Status.PENDING)
                           for o in outcomes) else state)
    logger.info("%d distinct digest(s) rendered in %.1fs", composer.rendered_sets,
                composer.render_seconds)
    try:  # everything is sent and recorded: the tidying up can only warn
        ledger.outbox.forget_sent(run_id)
        ledger.outbox.prune_sets()
        if retention is not None:
            prune(ledger, retention, now)
    except DigestMailerError as e:
        logger.warning("the ledger could not be pruned: %s", e.message)
    ledger.checkpoint()
    ledger.finish_run(run_id, report.finished_at, fetched=report.fetched,
                      sent=report.delivered, failed=report.failed, outcome=report.state,
                      cause=cause)
    return report


# Rows per outbox commit while composing: few at first, so the senders start at once, then
# more (each of the composer's commits empties the senders' page caches, and they wait for its
# write lock): 32 -> 256 took a tenth off a sender's store time while the run composes.
FIRST_BATCH, BATCH = 32, 256
BATCH_SECONDS = 0.2  # and never held longer than this, so senders are not kept waiting


def _compose(subscribers: tuple[Subscriber, ...], fetched: FetchResult, *, ledger: Ledger,
             composer: Composer, senders: Senders | None, slots: list[_Slot], run_id: int,
             now: datetime, run_date: date,
             on_progress: Callable[[SubscriberOutcome], None] | None,
             should_stop: Callable[[], bool]) -> bool:
    """Every subscriber's share, in the config's order in the report; True when stopped."""
    offers = composer.offers(ledger)
    batch: list[Queued] = []
    flushed = time.monotonic()
    limit = FIRST_BATCH

    def flush() -> None:
        nonlocal flushed, limit
        if batch:
            composer.saved(ledger.outbox.add_many(batch, run_id=run_id, now=now,
                                                  sets=composer.unsaved()))
            batch.clear()
            limit = min(limit * 2, BATCH)
        flushed = time.monotonic()
        if senders is not None:
            senders.check(ledger)

    # Subscribers who share filters go one after another, so each distinct digest is rendered
    # once while it is in the composer's bounded cache; the report keeps the config's order.
    order = sorted(range(len(subscribers)), key=lambda i: batch_key(subscribers[i]))
    own: dict[int, _Slot] = {}
    stopped = False
    for i in order:
        sub = subscribers[i]
        if stopped or should_stop():
            stopped = True
            own[i] = _Slot(sub.email, SubscriberOutcome(sub.email, Status.NOT_ATTEMPTED,
                                                        detail="the run was asked to stop"))
            continue
        result = decide(sub, fetched, ledger=ledger, composer=composer, run_date=run_date,
                        offers=offers)
        if isinstance(result, SubscriberOutcome):
            own[i] = _Slot(sub.email, result)
        else:
            queued = composer.queue(result, run_date, now, envelope_from=composer.shared
                                    .envelope_from)
            batch.append(queued)
            over = result.over_cap
            own[i] = _Slot(sub.email, message_id=queued.message_id,
                           note=f"{over} more over the cap" if over else "")
        if on_progress:
            on_progress(own[i].outcome or SubscriberOutcome(sub.email, Status.PENDING))
        if len(batch) >= limit or time.monotonic() - flushed > BATCH_SECONDS:
            flush()
    flush()
    slots += [own[i] for i in range(len(subscribers))]
    return stopped


def _outcome(slot: _Slot, fates: dict[str, Fate], for_workers: bool = False
             ) -> SubscriberOutcome:
    if slot.outcome is not None:
        return slot.outcome
    fate = fates.get(slot.message_id)
    if fate is None:  # not in the outbox: the run stopped before its batch was written
        return SubscriberOutcome(slot.email, Status.NOT_ATTEMPTED,
                                 detail="the run stopped before it was queued")
    note = f", {slot.note}" if slot.note else ""
    mid = slot.message_id
    if fate.state is MessageState.SENT:
        return SubscriberOutcome(slot.email, Status.SENT, fate.papers,
                                 f"{fate.papers} paper(s){note}", mid)
    if fate.state is MessageState.FAILED:
        return SubscriberOutcome(slot.email, Status.FAILED, fate.papers, fate.error, mid)
    if fate.state is MessageState.CANCELLED:
        return SubscriberOutcome(slot.email, Status.CANCELLED, fate.papers,
                                 f"not sent: {fate.error}", mid)
    if fate.state is MessageState.DEFERRED:
        return SubscriberOutcome(slot.email, Status.DEFERRED, fate.papers,
                                 f"{fate.error}; the next run tries again{note}", mid)
    waits = "queued for the send workers" if for_workers else "wait in the outbox for the next run"
    return SubscriberOutcome(slot.email, Status.PENDING, fate.papers,
                             f"{fate.papers} paper(s) {waits}{note}", mid)
