"""A dry run (`run --dry-run`, `preview`): every message built in this process and written by
the file backend; the ledger is only read."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from digest_mailer.compose import batch_key, decide
from digest_mailer.delivery import Backend
from digest_mailer.errors import DeliveryError
from digest_mailer.models import RunReport, Selection, Status, Subscriber, SubscriberOutcome
from digest_mailer.render import Renderer
from digest_mailer.sources import Source
from digest_mailer.store import Ledger


def preview_once(*, subscribers: tuple[Subscriber, ...], source: Source, ledger: Ledger,
                 backend: Backend, renderer: Renderer, envelope: Any, now: datetime,
                 run_date: date, ignore_ledger: bool = False,
                 on_progress: Callable[[SubscriberOutcome], None] | None = None) -> RunReport:
    """A dry run: every message built here and handed to the file backend; nothing recorded."""
    fetched = source.fetch(run_date)
    composer = envelope.composer(renderer, fetched.papers, run_date, None, now)
    order = sorted(range(len(subscribers)), key=lambda i: batch_key(subscribers[i]))
    offers = None if ignore_ledger else composer.offers(ledger)
    own: dict[int, SubscriberOutcome] = {}
    for i in order:
        sub = subscribers[i]
        result = decide(sub, fetched, ledger=ledger, composer=composer, run_date=run_date,
                        offers=offers)
        if isinstance(result, Selection):
            message = composer.compose(result, run_date, now, want_html=True)
            papers = len(result.matches)
            try:
                receipt = backend.send(message)
            except DeliveryError as e:
                if e.fatal:
                    raise
                result = SubscriberOutcome(sub.email, Status.FAILED, papers, e.message)
            else:
                over = f", {result.over_cap} more over the cap" if result.over_cap else ""
                result = SubscriberOutcome(sub.email, Status.WRITTEN, papers,
                                           f"{papers} paper(s){over}", message.message_id,
                                           receipt.location)
        own[i] = result
        if on_progress:
            on_progress(result)
    return RunReport(run_date=run_date, started_at=now, finished_at=datetime.now(now.tzinfo),
                     origin=fetched.origin, fetched=len(fetched.papers),
                     skipped=fetched.skipped, skipped_reasons=fetched.skipped_reasons,
                     outcomes=tuple(own[i] for i in range(len(subscribers))), dry_run=True)
