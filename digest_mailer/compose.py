"""Selections -> messages, fast: each distinct digest (same papers, reasons and filters) is
rendered and serialised once per run, then spliced per subscriber. Filters are matched once per
profile. Caches are bounded, so memory stays flat however many subscribers there are."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from digest_mailer.message import (
    DkimSigner,
    MessageTemplate,
    Shared,
    make_message_id,
    unsubscribe_token,
)
from digest_mailer.models import Digest, Match, OutgoingMessage, Paper, Selection, Subscriber
from digest_mailer.render import Renderer
from digest_mailer.select import profile_key, ranked_matches, select_ranked
from digest_mailer.store import Ledger
from digest_mailer.store.outbox import Entry
from digest_mailer.topics import Feed

logger = logging.getLogger(__name__)


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
    _by_set: dict[int, MessageTemplate | None] = field(default_factory=dict)

    def select(self, sub: Subscriber, offered: Collection[str]) -> Selection:
        key = profile_key(sub)
        ranked = self._ranked.get(key)
        if ranked is None:
            if self._feed is None:
                self._feed = Feed.of(self.papers)
            ranked = self._ranked[key] = ranked_matches(sub, self._feed)
        return select_ranked(sub, ranked, offered)

    def _template(self, digest: Digest, now: datetime) -> MessageTemplate:
        key = self.renderer.template_key(digest)
        found = self._templates.get(key)
        if found is not None:
            self._templates.move_to_end(key)
            return found
        started = time.perf_counter()
        template = MessageTemplate(self.renderer.render_template(digest), self.shared)
        self.render_seconds += time.perf_counter() - started
        if self.ledger is not None and not self.ledger.readonly:
            template.set_id = self.ledger.outbox.add_set(template.to_bytes(), now)
        self.rendered_sets += 1
        self._templates[key] = template
        if len(self._templates) > self.max_templates:
            self._templates.popitem(last=False)
        return template

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
            message_id=make_message_id(self.domain, now), want_html=want_html)

    def rebuild(self, entry: Entry, signer: DkimSigner | None) -> OutgoingMessage | None:
        """An outbox message again, from its stored template, under its own Message-ID."""
        if entry.set_id is None or self.ledger is None:
            return None
        if entry.set_id not in self._by_set:
            data = self.ledger.outbox.load_set(entry.set_id)
            self._by_set[entry.set_id] = None if data is None else MessageTemplate.from_bytes(
                data, set_id=entry.set_id, signer=signer)
        template = self._by_set[entry.set_id]
        if template is None:
            return None
        return template.personalize(email=entry.recipient, name=entry.name,
                                    unsubscribe_url=entry.unsubscribe_url, token=entry.token,
                                    message_id=entry.message_id)
