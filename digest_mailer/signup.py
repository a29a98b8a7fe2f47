"""Sign-up and preferences: the signed tokens of each kind, reading the form's values, the
live preview, and the confirmation email. No web framework here: web_pages.py serves it."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.utils import format_datetime
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from digest_mailer.advice import topic_warnings
from digest_mailer.config_values import bare_address
from digest_mailer.constants import WEEKDAYS
from digest_mailer.models import Paper, Subscriber
from digest_mailer.select import ranked_matches
from digest_mailer.topics import Feed

CONFIRM_DAYS = 2  # a confirmation link works this long
PREFERENCES_SECONDS = 7 * 86400  # a preferences page's own link (the email's link never ends)
RESUBSCRIBE_SECONDS = 86400
MAX_EMAIL = 254
MAX_TERM = 100
MAX_TERMS = 20  # per list: topics, exclusions, authors
MAX_FIELD = 4000  # characters of one form field
PREVIEW_TITLES = 5
PURPOSES = ("confirm", "preferences", "resubscribe")


class Tokens:
    """Signed, expiring tokens, one salt per purpose, bound to the list: a token of one kind
    or of another list is refused. itsdangerous compares signatures in constant time."""

    def __init__(self, secret: bytes, list_id: str) -> None:
        self.list_id = list_id
        self._secret = secret
        self._kinds = {p: URLSafeTimedSerializer(secret, salt=f"digest-mailer {p}")
                       for p in PURPOSES}

    def make(self, purpose: str, email: str, *extra: str) -> str:
        return str(self._kinds[purpose].dumps([self.list_id, email, *extra]))

    def read(self, purpose: str, token: str, max_age: int, now: datetime
             ) -> tuple[str, ...] | None:
        """(email, *extra), or None for a forged, expired, other-kind or other-list token."""
        if len(token) > 2000:
            return None
        try:
            value = self._kinds[purpose].loads(token, max_age=max_age)
        except (BadSignature, SignatureExpired):
            return None
        if not (isinstance(value, list) and len(value) >= 2 and
                all(isinstance(v, str) for v in value) and value[0] == self.list_id):
            return None
        return tuple(value[1:])

    def csrf(self, cookie: str) -> str:
        """The form field that goes with this browser's cookie (double submit, signed)."""
        return hmac.new(self._secret, b"csrf\0" + cookie.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, cookie: str, field: str) -> bool:
        return bool(cookie) and hmac.compare_digest(self.csrf(cookie).encode(),
                                                    field.encode("utf-8", "replace"))

    def blind(self, value: str) -> str:
        """A keyed hash: the rate-limit table never holds an IP or an address."""
        return hmac.new(self._secret, b"rate\0" + value.lower().encode(),
                        hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Prefs:
    topics: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    frequency: str = "daily"
    weekday: int = 0
    paused: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"topics": list(self.topics), "exclude": list(self.exclude),
                "authors": list(self.authors), "frequency": self.frequency,
                "weekday": self.weekday}

    def subscriber(self, email: str = "preview@example.invalid",
                   aliases: tuple[tuple[str, ...], ...] = ()) -> Subscriber:
        return Subscriber(email=email, topics=self.topics, exclude=self.exclude,
                          authors=self.authors, frequency=self.frequency,
                          weekday=self.weekday, paused=self.paused, aliases=aliases)


class FormError(ValueError):
    """A value the form cannot take: shown beside the form, with the values kept."""


_SPLIT = re.compile(r"[\n,;]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _terms(text: str, what: str) -> tuple[str, ...]:
    if len(text) > MAX_FIELD:
        raise FormError(f"{what}: too long (at most {MAX_FIELD} characters)")
    out: list[str] = []
    for raw in _SPLIT.split(_CONTROL.sub(" ", text)):
        term = " ".join(raw.split())
        if not term:
            continue
        if len(term) > MAX_TERM:
            raise FormError(f"{what}: {term[:40]!r}... is longer than {MAX_TERM} characters")
        if term.casefold() not in {t.casefold() for t in out}:
            out.append(term)
    if len(out) > MAX_TERMS:
        raise FormError(f"{what}: at most {MAX_TERMS}, one per line or separated by commas")
    return tuple(out)


def one(form: Mapping[str, list[str]], name: str) -> str:
    values = form.get(name) or [""]
    return values[0]


def read_prefs(form: Mapping[str, list[str]]) -> Prefs:
    frequency = one(form, "frequency") or "daily"
    if frequency not in ("daily", "weekly"):
        raise FormError("how often: daily or weekly")
    day = one(form, "weekday") or "mon"
    if day not in WEEKDAYS:
        raise FormError("the day of a weekly email: mon to sun")
    return Prefs(topics=_terms(one(form, "topics"), "topics"),
                 exclude=_terms(one(form, "exclude"), "exclusions"),
                 authors=_terms(one(form, "authors"), "authors"),
                 frequency=frequency, weekday=WEEKDAYS.index(day),
                 paused=one(form, "pause") == "on")


def read_email(form: Mapping[str, list[str]]) -> str:
    value = one(form, "email").strip()
    if not value or len(value) > MAX_EMAIL:
        raise FormError("an email address, please")
    try:
        return bare_address(value)
    except ValueError:
        raise FormError("that does not look like an email address") from None


@dataclass(frozen=True, slots=True)
class Preview:
    papers: int  # how many the topics would have sent
    known: int  # papers the ledger knows over those days
    days: int
    titles: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Known:
    """The papers the ledger knows, tokenised once for every preview: all of them, and by
    day (for the topic warnings)."""

    everything: Feed
    days: Mapping[str, Feed]

    @classmethod
    def of(cls, feeds: Mapping[str, Sequence[Paper]]) -> Known:
        return cls(Feed.of([p for day in sorted(feeds) for p in feeds[day]]),
                   {day: Feed.of(papers) for day, papers in feeds.items()})


def preview(prefs: Prefs, known: Known, aliases: tuple[tuple[str, ...], ...] = ()) -> Preview:
    """What these filters would have picked from the feeds the ledger knows (titles only)."""
    sub = prefs.subscriber(aliases=aliases)
    ranked = ranked_matches(sub, known.everything) if len(known.everything) else ()
    warnings = topic_warnings([sub], known.days, what=f"the last {len(known.days)} day(s)") \
        if prefs.topics else []
    return Preview(len(ranked), len(known.everything), len(known.days),
                   tuple(m.paper.title for m in ranked[:PREVIEW_TITLES]),
                   tuple(w.replace(f" ({sub.email})", "").removeprefix("warning: ")
                         for w in warnings))


def new_nonce() -> str:
    return secrets.token_hex(8)


def confirmation_headers(*, sender: str, to: str, subject: str, message_id: str,
                         when: datetime, reply_to: str | None) -> dict[str, str]:
    headers = {"From": sender, "To": str(Address(addr_spec=to)), "Subject": subject,
               "Date": format_datetime(when), "Message-ID": message_id,
               "Auto-Submitted": "auto-generated"}
    if reply_to:
        headers["Reply-To"] = reply_to
    return headers
