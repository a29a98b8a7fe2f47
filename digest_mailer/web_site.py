"""What the self-service pages share: the store and the papers for the preview, the page and
message rendering, the CSRF cookie, form reading, rate limits, the settings they follow."""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from digest_mailer import signup as su
from digest_mailer.audience import Member, from_store, overridden
from digest_mailer.config import Config
from digest_mailer.constants import WEEKDAYS
from digest_mailer.store import Ledger
from digest_mailer.store.selfservice import SelfService, StoredSubscriber
from digest_mailer.store_target import StoreTarget
from digest_mailer.web import (
    HEADERS,
    Snapshot,
    Tokens,
    TooSlow,
    form_fields,
    read_capped,
)
from digest_mailer.web_mail import render_page

logger = logging.getLogger(__name__)

PAGE_HEADERS = {**HEADERS, "Content-Security-Policy":
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; "
                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                "base-uri 'none'"}
MAX_FORM = 16 * 1024
CSRF_COOKIE = "dm_csrf"
SIGNUP_COOKIE = "dm_signup"  # this browser asked for this sign-up (see _a_person)
# A confirmation link opened sooner than this after it was mailed, by a browser that did not
# sign up, gets the button: link scanners open links the moment mail arrives.
CONFIRM_QUIET_SECONDS = 15
MAIL_EVERY = timedelta(hours=1)  # at most one confirmation email per address per hour
# (bucket, requests, seconds): fixed windows, counted in the store.
LIMITS = {"signup-ip": (10, 3600), "signup-address": (5, 3600), "prefs-ip": (30, 3600),
          "prefs-address": (10, 3600), "preview-ip": (600, 3600)}
FEEDS_SECONDS = 60.0  # how long the preview's papers are reused
_HEX = re.compile(r"[0-9a-f]{32}")
WEEKDAY_NAMES = tuple(zip(WEEKDAYS, ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                     "Saturday", "Sunday"), strict=True))


def base_url(config: Config) -> str:
    if config.web.base_url:
        return config.web.base_url
    url = config.unsubscribe.url
    at = url.find("/unsubscribe/{token}")
    if at < 0:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"
    return url[:at]


class Ready(NamedTuple):
    snap: Snapshot
    signer: su.Tokens
    config: Config


@dataclass
class Site:
    tokens: Tokens
    env: Mapping[str, str]
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    _stores: dict[StoreTarget, SelfService] = field(default_factory=dict)
    _feeds: dict[StoreTarget, tuple[float, su.Known]] = field(default_factory=dict)

    def store(self, config: Config) -> SelfService:
        where = config.state_target
        if where not in self._stores:
            self._stores[where] = SelfService.at(where)
        return self._stores[where]

    def feeds(self, config: Config) -> su.Known:
        """The last 7 days of papers the ledger knows, tokenised; read again after a minute."""
        where = config.state_target
        cached = self._feeds.get(where)
        if cached is None or time.monotonic() - cached[0] > FEEDS_SECONDS:
            with Ledger.open_readonly(where) as ledger:
                known = su.Known.of(ledger.recent_titles(7))
            cached = self._feeds[where] = (time.monotonic(), known)
        return cached[1]

    def member(self, config: Config, email: str) -> Member | None:
        key = email.lower()
        row = self.store(config).get(key)
        sub = next((s for s in config.subscribers_view() if s.key == key), None)
        if sub is not None:
            return Member(sub, "config") if row is None else \
                Member(overridden(sub, row), "config+override", row.origin, row)
        if row is not None and row.kind == "store":
            return Member(from_store(row, config), "store", row.origin, row)
        return None

    def allowed(self, config: Config, signer: su.Tokens, bucket: str, value: str) -> bool:
        limit, window = LIMITS[bucket]
        if bucket.endswith("-address"):
            value = mailbox(value)
        return self.store(config).hit(bucket, signer.blind(value), limit=limit, window=window,
                                      now=time.time())

    def page(self, name: str, snap: Snapshot, status: int = 200, **values: Any) -> HTMLResponse:
        assert snap.config is not None
        html = render_page(name, newsletter=snap.config.newsletter.name,
                           weekdays=WEEKDAY_NAMES, **values)
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    def message(self, snap: Snapshot, title: str, *paragraphs: str, status: int = 200,
                **extra: Any) -> HTMLResponse:
        values = {"form_action": "", "form_csrf": "", "form_button": "", "link": "",
                  "link_text": ""} | extra
        return self.page("message.html.j2", snap, status, title=title, paragraphs=paragraphs,
                         **values)

    def unavailable(self) -> Response:
        return HTMLResponse("<!doctype html><title>Unavailable</title><p>This service is not "
                            "available right now; please try again later.</p>",
                            status_code=503, headers=PAGE_HEADERS)

    def cookie_of(self, request: Request) -> tuple[str, bool]:
        value = request.cookies.get(CSRF_COOKIE, "")
        return (value, False) if _HEX.fullmatch(value) else (secrets.token_hex(16), True)

    def with_cookie(self, response: Response, request: Request, value: str, new: bool) -> Response:
        if new:
            response.set_cookie(CSRF_COOKIE, value, httponly=True, samesite="lax",
                                secure=request.url.scheme == "https", path="/")
        return response

    async def form_of(self, request: Request) -> dict[str, list[str]] | Response:
        try:
            body = await read_capped(request, MAX_FORM)
        except TooSlow:
            return Response("request body too slow", 408, headers={**PAGE_HEADERS,
                                                                    "Connection": "close"})
        if body is None:
            return Response("request too large", 413, headers=PAGE_HEADERS)
        return form_fields(request.headers.get("content-type", ""), body)

    def ready(self) -> Ready | Response:
        """What every page starts from: the config as last read, its token signer, and the
        config itself; or the 503 page while the config cannot be read."""
        snap = self.tokens.snapshot
        if snap.config is None:
            return self.unavailable()
        return Ready(snap, su.Tokens(snap.secret, snap.list_id), snap.config)

    def forbidden(self, snap: Snapshot) -> HTMLResponse:
        return self.message(snap, "This form has expired",
                            "Please go back, reload the page and send it again.", status=403)

    async def preview_of(self, config: Config, prefs: su.Prefs) -> su.Preview | None:
        if not (prefs.topics or prefs.authors):
            return None
        feeds = await run_in_threadpool(self.feeds, config)
        aliases = tuple((k, *v) for k, v in config.aliases.items())
        return await run_in_threadpool(su.preview, prefs, feeds, aliases)


def _values(form: Mapping[str, list[str]] | None = None, prefs: su.Prefs | None = None,
            email: str = "") -> dict[str, Any]:
    if form is not None:
        return {k: su.one(form, k)[:su.MAX_FIELD] for k in
                ("email", "topics", "exclude", "authors", "frequency", "weekday")} | {
            "pause": su.one(form, "pause") == "on"}
    p = prefs or su.Prefs()
    return {"email": email, "topics": "\n".join(p.topics), "exclude": "\n".join(p.exclude),
            "authors": "\n".join(p.authors), "frequency": p.frequency,
            "weekday": WEEKDAYS[p.weekday], "pause": p.paused}


def _client(request: Request) -> str:
    """The network a request comes from, for the per-IP limits: an IPv4 address, or an IPv6
    address's /64 (one host usually holds a whole /64, so counting its addresses one by one
    would let it sign up without limit)."""
    host = request.client.host if request.client else "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def mailbox(email: str) -> str:
    """One mailbox however it is spelled, for the per-address limits: case, compatibility
    forms (fullwidth letters) and a +tag do not make another address (a+1@, a+2@ ... reach
    the same inbox; counting them apart would let one inbox be mailed without limit)."""
    local, _, domain = unicodedata.normalize("NFKC", email).casefold().rpartition("@")
    return f"{local.split('+', 1)[0] or local}@{domain}"


def _save(store: SelfService, member: Member, prefs: su.Prefs, now: datetime) -> None:
    """A config subscriber's change is their override; a store subscriber's, their row."""
    row = member.stored
    base = row if row is not None else StoredSubscriber(
        email=member.subscriber.email, kind="override", origin="web")
    store.put(StoredSubscriber(
        email=base.email, kind=base.kind, origin=base.origin, name=base.name,
        topics=prefs.topics, exclude=prefs.exclude, authors=prefs.authors,
        min_upvotes=base.min_upvotes, max_papers=base.max_papers, frequency=prefs.frequency,
        weekday=prefs.weekday, paused=prefs.paused, created_at=base.created_at), now)


def _masked(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}{'•' * max(len(local) - 1, 1)}@{domain}"


def render_escape(text: str) -> str:
    import html

    return html.escape(text)


PRIVACY_STUB = (
    "This page is for the operator to fill in: set [web] privacy_file in the config.",
    "What this service keeps: your email address, the topics, exclusions, authors and "
    "cadence you choose, when you signed up and confirmed, and which papers were sent to "
    "you and when (so that none is sent twice). A sign-up never confirmed is forgotten after "
    "30 days.",
    "The pages load nothing from other sites: no fonts, scripts, trackers or analytics. "
    "Rate limits keep a keyed hash of your network address for an hour, never the address.",
    "Every email has a one-click unsubscribe link and a link to change your topics.")


def privacy_text(config: Config) -> tuple[str, ...]:
    if not config.web.privacy_file:
        return PRIVACY_STUB
    try:
        text = config.resolve(config.web.privacy_file).read_text(encoding="utf-8")[:100_000]
    except (OSError, UnicodeDecodeError) as e:
        logger.error("web.privacy_file: cannot read it: %s", e)
        return PRIVACY_STUB
    return tuple(" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip())
