"""Selections -> messages, fast: each distinct digest (same papers, reasons and filters) is
rendered and serialised once per run, then spliced per subscriber. Filters are matched once per
profile. Caches are bounded, so memory stays flat however many subscribers there are."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TypeVar

from digest_mailer.constants import WEEKDAYS
from digest_mailer.message import (
    Frame,
    MessageIds,
    MessageTemplate,
    Shared,
    unsubscribe_token,
)
from digest_mailer.models import (
    Digest,
    FetchResult,
    Match,
    OutgoingMessage,
    Paper,
    Selection,
    Status,
    Subscriber,
    SubscriberOutcome,
)
from digest_mailer.render import Renderer
from digest_mailer.select import profile_key, ranked_matches, select_ranked
from digest_mailer.store import Ledger
from digest_mailer.store.ledger import NO_OFFERS, Offers
from digest_mailer.store.outbox import Queued
from digest_mailer.topics import Feed

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Composer:
    renderer: Renderer
    shared: Shared
    newsletter: str
    domain: str
    unsubscribe_url: str  # with {token}
    secret: bytes
    papers: Sequence[Paper]
    ledger: Ledger | None = None  # when set, each new template is stored for the outbox
    max_templates: int = 32  # subscribers come batched by profile: recent templates suffice
    rendered_sets: int = 0
    render_seconds: float = 0.0  # spent rendering and serialising distinct digests
    _ranked: dict[tuple[object, ...], tuple[Match, ...]] = field(default_factory=dict)
    _feed: Feed | None = None  # the papers tokenised once for every profile
    _templates: OrderedDict[tuple[object, ...], MessageTemplate] = field(
        default_factory=OrderedDict)
    _sets: OrderedDict[tuple[object, ...], int] = field(default_factory=OrderedDict)
    # Templates built but not yet in the outbox, by the provisional (negative) set ids their
    # rows carry until the batch that writes both (`unsaved`, then `saved`).
    _unsaved: dict[int, bytes] = field(default_factory=dict)
    _provisional: int = 0
    _frame: Frame | None = None  # the headers and MIME frame every digest of the run shares
    _ids: MessageIds | None = None

    def ranked(self, sub: Subscriber) -> tuple[Match, ...]:
        """The subscriber's matches, best first, before the ledger's say (once per profile)."""
        key = profile_key(sub)
        ranked = self._ranked.get(key)
        if ranked is None:
            if self._feed is None:
                self._feed = Feed.of(self.papers)
            ranked = self._ranked[key] = ranked_matches(sub, self._feed)
        return ranked

    def offers(self, ledger: Ledger) -> Offers:
        """What the ledger says was offered to anyone among this run's papers: read once,
        from their first sightings (the run's time for one it never saw)."""
        if not self.papers:
            return NO_OFFERS
        seen = ledger.first_seen([p.id for p in self.papers])
        now = self.shared.when
        return ledger.offers({p.id: seen.get(p.id, now) for p in self.papers}, now)

    def select(self, sub: Subscriber, offered: Collection[str]) -> Selection:
        return select_ranked(sub, self.ranked(sub), offered)

    def _template(self, digest: Digest, now: datetime) -> MessageTemplate:
        def build() -> MessageTemplate:
            template = self._built(digest)
            if self.ledger is not None and not self.ledger.readonly:
                template.set_id = self.ledger.outbox.add_set(template.to_bytes(), now)
            return template

        return self._cached(self._templates, self.renderer.template_key(digest), build)

    def _built(self, digest: Digest) -> MessageTemplate:
        template = MessageTemplate(self.renderer.render_template(digest), self.shared,
                                   frame=self._frame)
        self._frame = template.frame
        return template

    def _set(self, digest: Digest) -> int:
        """The outbox's copy of this digest's template: rendered and built once; the senders
        splice each subscriber's message from it. Its id is provisional (negative) until the
        batch of rows that first needs it stores both (`unsaved`)."""

        def build() -> int:
            # Built here, where there is time to spare while the senders send, and stored
            # with its splice points worked out, so that no sender builds it again.
            template = self._built(digest)
            self._provisional -= 1
            self._unsaved[self._provisional] = template.to_compiled()
            return self._provisional

        return self._cached(self._sets, self.renderer.template_key(digest), build)

    def unsaved(self) -> dict[int, bytes]:
        """The templates the rows queued so far need and the outbox lacks (given once)."""
        out, self._unsaved = self._unsaved, {}
        return out

    def saved(self, ids: Mapping[int, int]) -> None:
        """The outbox's ids for templates `unsaved` gave: the rows queued from now on carry
        them."""
        for key, set_id in self._sets.items():
            if set_id in ids:
                self._sets[key] = ids[set_id]

    def _cached(self, cache: OrderedDict[tuple[object, ...], T],
                key: tuple[object, ...], build: Callable[[], T]) -> T:
        """One distinct digest's template, built once while it is among the recent ones."""
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        started = time.perf_counter()
        found = cache[key] = build()
        self.render_seconds += time.perf_counter() - started
        self.rendered_sets += 1
        if len(cache) > self.max_templates:
            cache.popitem(last=False)
        return found

    def compose(self, selection: Selection, run_date: date, now: datetime, *,
                want_html: bool = False) -> OutgoingMessage:
        sub = selection.subscriber
        token = unsubscribe_token(self.secret, sub.email, self.shared.list_id)
        url = self.unsubscribe_url.replace("{token}", token)
        digest = Digest(newsletter=self.newsletter, run_date=run_date, subscriber=sub,
                        matches=selection.matches, over_cap=selection.over_cap,
                        unsubscribe_url=url)
        return self._template(digest, now).personalize(
            email=sub.email, name=sub.name, unsubscribe_url=url, token=token,
            message_id=self._message_id(now), want_html=want_html)

    def _message_id(self, now: datetime) -> str:
        ids = self._ids
        if ids is None or ids.when != now:
            ids = self._ids = MessageIds(self.domain, now)
        return ids()

    def queue(self, selection: Selection, run_date: date, now: datetime,
              envelope_from: str) -> Queued:
        """The outbox row for this subscriber's message: its digest's template (stored once,
        with the first batch of rows that needs it: `unsaved`), the few values that make it
        theirs, its Message-ID fixed now. A sender builds the bytes."""
        sub = selection.subscriber
        token = unsubscribe_token(self.secret, sub.email, self.shared.list_id)
        url = self.unsubscribe_url.replace("{token}", token)
        digest = Digest(newsletter=self.newsletter, run_date=run_date, subscriber=sub,
                        matches=selection.matches, over_cap=selection.over_cap,
                        unsubscribe_url=url)
        return Queued(set_id=self._set(digest), recipient=sub.email, name=sub.name,
                      unsubscribe_url=url, token=token, message_id=self._message_id(now),
                      subject="",
                      envelope_from=envelope_from,
                      included=tuple(m.paper.id for m in selection.matches),
                      offered=tuple(selection.offered))


def batch_key(sub: Subscriber) -> tuple[object, ...]:
    return (*profile_key(sub), sub.max_papers, bool(sub.name))


def decide(sub: Subscriber, fetched: FetchResult, *, ledger: Ledger, composer: Composer,
           run_date: date, offers: Offers | None) -> SubscriberOutcome | Selection:
    """Why nothing goes to this subscriber, or what does. `offers`: what the ledger says was
    offered (`Composer.offers`); None ignores it."""
    if sub.paused:
        return SubscriberOutcome(sub.email, Status.PAUSED, detail="pause = true")
    if not sub.due_on(run_date):
        return SubscriberOutcome(sub.email, Status.NOT_DUE,
                                 detail=f"weekly, next on {WEEKDAYS[sub.weekday]}")
    suppressed = ledger.suppressed(sub.email)
    if suppressed:
        return SubscriberOutcome(sub.email, Status.SUPPRESSED, detail=suppressed)
    ranked = composer.ranked(sub)
    offered = offers.of(sub.email, (m.paper.id for m in ranked)) if offers is not None and ranked \
        else frozenset()
    selection = select_ranked(sub, ranked, offered)
    if not selection.matches:
        if selection.matched_total == 0:
            why = "no paper matches" if fetched.papers else "the feed is empty"
            return SubscriberOutcome(sub.email, Status.NO_MATCH, detail=why)
        where = " or wait in the outbox" if offers is not None and sub.key in offers.waiting else ""
        return SubscriberOutcome(sub.email, Status.NOTHING_NEW,
                                 detail=f"all {selection.matched_total} matching papers were "
                                        f"offered before{where}")
    return selection
