"""The self-service pages of `digest-mailer web`: sign-up with double opt-in (/ and
/confirm/<token>), the preferences page every digest links to (/preferences/<token>), the
re-subscribe offer after an unsubscribe, /privacy and the live preview (/preview).

Every form carries a CSRF field: bound to a cookie of this browser for sign-up and preferences,
to the signed token in the URL for confirm and re-subscribe. Sign-up answers the same whatever
the address (known, new, rate limited, honeypot). The rest of the service is web.py."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from digest_mailer import signup as su
from digest_mailer.audience import Member, from_store, overridden
from digest_mailer.config import Config
from digest_mailer.constants import WEEKDAYS
from digest_mailer.errors import DigestMailerError
from digest_mailer.message import unsubscribe_token
from digest_mailer.models import Paper
from digest_mailer.store import Ledger
from digest_mailer.store.selfservice import SelfService, StoredSubscriber
from digest_mailer.web import (
    HEADERS,
    Snapshot,
    Tokens,
    TooSlow,
    create_app,
    form_fields,
    read_capped,
)
from digest_mailer.web_mail import asset, confirmation, render_page, send

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


@dataclass
class Site:
    tokens: Tokens
    env: Mapping[str, str]
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    _stores: dict[Path, SelfService] = field(default_factory=dict)
    _feeds: dict[Path, tuple[float, dict[str, list[Paper]]]] = field(default_factory=dict)

    def store(self, config: Config) -> SelfService:
        path = config.state_path
        if path not in self._stores:
            with Ledger.open(path):  # the ledger's own tables first
                pass
            self._stores[path] = SelfService.at(path)
        return self._stores[path]

    def feeds(self, config: Config) -> dict[str, list[Paper]]:
        path = config.state_path
        cached = self._feeds.get(path)
        if cached is None or time.monotonic() - cached[0] > FEEDS_SECONDS:
            with Ledger.open_readonly(path) as ledger:
                cached = self._feeds[path] = (time.monotonic(), ledger.recent_titles(7))
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
        return self.store(config).hit(bucket, signer.blind(value), limit=limit, window=window,
                                      now=time.time())


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
    return request.client.host if request.client else "unknown"


def create_site(tokens: Tokens, env: Mapping[str, str], *,
                now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Starlette:
    site = Site(tokens, env, now)

    def page(name: str, snap: Snapshot, status: int = 200, **values: Any) -> HTMLResponse:
        assert snap.config is not None
        html = render_page(name, newsletter=snap.config.newsletter.name,
                           weekdays=WEEKDAY_NAMES, **values)
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    def message(snap: Snapshot, title: str, *paragraphs: str, status: int = 200,
                **extra: Any) -> HTMLResponse:
        values = {"form_action": "", "form_csrf": "", "form_button": "", "link": "",
                  "link_text": ""} | extra
        return page("message.html.j2", snap, status, title=title, paragraphs=paragraphs,
                    **values)

    def unavailable() -> Response:
        return HTMLResponse("<!doctype html><title>Unavailable</title><p>This service is not "
                            "available right now; please try again later.</p>",
                            status_code=503, headers=PAGE_HEADERS)

    def cookie_of(request: Request) -> tuple[str, bool]:
        value = request.cookies.get(CSRF_COOKIE, "")
        return (value, False) if _HEX.fullmatch(value) else (secrets.token_hex(16), True)

    def with_cookie(response: Response, request: Request, value: str, new: bool) -> Response:
        if new:
            response.set_cookie(CSRF_COOKIE, value, httponly=True, samesite="lax",
                                secure=request.url.scheme == "https", path="/")
        return response

    async def form_of(request: Request) -> dict[str, list[str]] | Response:
        try:
            body = await read_capped(request, MAX_FORM)
        except TooSlow:
            return Response("request body too slow", 408, headers={**PAGE_HEADERS,
                                                                    "Connection": "close"})
        if body is None:
            return Response("request too large", 413, headers=PAGE_HEADERS)
        return form_fields(request.headers.get("content-type", ""), body)

    def snapshot() -> tuple[Snapshot, su.Tokens] | None:
        snap = tokens.snapshot
        if snap.config is None:
            return None
        return snap, su.Tokens(snap.secret, snap.list_id)

    def forbidden(snap: Snapshot) -> HTMLResponse:
        return message(snap, "This form has expired",
                       "Please go back, reload the page and send it again.", status=403)

    async def preview_of(config: Config, prefs: su.Prefs) -> su.Preview | None:
        if not (prefs.topics or prefs.authors):
            return None
        feeds = await run_in_threadpool(site.feeds, config)
        aliases = tuple((k, *v) for k, v in config.aliases.items())
        return await run_in_threadpool(su.preview, prefs, feeds, aliases)

    # -- sign-up ---------------------------------------------------------------------------

    async def signup_page(request: Request) -> Response:
        got = snapshot()
        if got is None:
            return unavailable()
        snap, _ = got
        assert snap.config is not None
        if not snap.config.web.signup:
            return message(snap, "Sign-up is closed", "This newsletter takes no new "
                           "subscribers here.", status=404)
        value, new = cookie_of(request)
        return with_cookie(page("signup.html.j2", snap, title="Subscribe", error="",
                                csrf=got[1].csrf(value), values=_values(), preview=None),
                           request, value, new)

    async def signup(request: Request) -> Response:
        got = snapshot()
        if got is None:
            return unavailable()
        snap, signer = got
        config = snap.config
        assert config is not None
        if not config.web.signup:
            return message(snap, "Sign-up is closed", "This newsletter takes no new "
                           "subscribers here.", status=404)
        form = await form_of(request)
        if isinstance(form, Response):
            return form
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not signer.csrf_ok(cookie, su.one(form, "csrf")):
            return forbidden(snap)
        done = message(snap, "Check your inbox", "If the address can receive email, a "
                       "message with a confirmation link is on its way. Click it to start "
                       "receiving the newsletter.", "Nothing is sent until you do.")

        def again(error: str, status: int, preview: su.Preview | None = None) -> Response:
            return page("signup.html.j2", snap, status, title="Subscribe", error=error,
                        csrf=signer.csrf(cookie), values=_values(form), preview=preview)

        if su.one(form, "website"):  # the honeypot: bots fill every field
            logger.info("sign-up: honeypot filled, ignored")
            return done
        try:
            prefs = su.read_prefs(form)
            if su.one(form, "action") == "preview":
                return again("", 200, await preview_of(config, prefs))
            email = su.read_email(form)
        except su.FormError as e:
            return again(str(e), 400)
        if not await run_in_threadpool(site.allowed, config, signer, "signup-ip",
                                       _client(request)):
            return message(snap, "Too many sign-ups", "Too many sign-ups came from your "
                           "network; please try again in an hour.", status=429)
        if not await run_in_threadpool(site.allowed, config, signer, "signup-address", email):
            return done  # the same answer: whether an address is known is never said
        store = site.store(config)
        nonce, mail = await run_in_threadpool(store.request, email, prefs.to_json(),
                                              su.new_nonce(), site.now(), MAIL_EVERY)
        if mail:
            link = f"{base_url(config)}/confirm/{signer.make('confirm', email, nonce)}"
            msg = confirmation(config, snap.secret, to=email, link=link, now=site.now())
            try:
                await run_in_threadpool(send, config, env, msg)
            except DigestMailerError as e:
                logger.error("sign-up: cannot send the confirmation email: %s", e)
                await run_in_threadpool(store.unmail, email)
                return message(snap, "Please try again later", "The confirmation email "
                               "could not be sent just now.", status=503)
        done.set_cookie(SIGNUP_COOKIE, signer.csrf(f"browser {email.lower()} {nonce}"),
                        max_age=su.CONFIRM_DAYS * 86400, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/confirm/")
        return done

    async def preview(request: Request) -> Response:
        got = snapshot()
        if got is None:
            return unavailable()
        snap, signer = got
        assert snap.config is not None
        form = await form_of(request)
        if isinstance(form, Response):
            return form
        if not signer.csrf_ok(request.cookies.get(CSRF_COOKIE, ""), su.one(form, "csrf")):
            return Response("expired form", 403, headers=PAGE_HEADERS)
        if not await run_in_threadpool(site.allowed, snap.config, signer, "preview-ip",
                                       _client(request)):
            return Response("too many previews", 429, headers=PAGE_HEADERS)
        try:
            prefs = su.read_prefs(form)
        except su.FormError as e:
            return HTMLResponse(f"<p class=\"warning\">{render_escape(str(e))}</p>",
                                headers=PAGE_HEADERS)
        html = render_page("preview.html.j2", preview=await preview_of(snap.config, prefs))
        return HTMLResponse(html, headers=PAGE_HEADERS)

    async def script(_request: Request) -> Response:
        return Response(asset("preview.js"), media_type="text/javascript",
                        headers={**PAGE_HEADERS, "Cache-Control": "max-age=3600"})

    # -- confirmation ----------------------------------------------------------------------

    def _a_person(request: Request, signer: su.Tokens, pending: Any, email: str, nonce: str
                  ) -> bool:
        """A person's click, not a link scanner: the browser that signed up (its cookie), or
        a browser's own navigation from a click (Fetch Metadata: no script and no scanner's
        HTTP client sends Sec-Fetch-User) once the first seconds after mailing are over."""
        h = request.headers
        if request.method != "GET" or "prefetch" in (h.get("sec-purpose", "") +
                                                     h.get("purpose", "")):
            return False
        cookie = request.cookies.get(SIGNUP_COOKIE, "")
        if cookie and hmac.compare_digest(
                cookie.encode(), signer.csrf(f"browser {email.lower()} {nonce}").encode()):
            return True
        clicked = (h.get("sec-fetch-mode") == "navigate" and h.get("sec-fetch-dest") ==
                   "document" and h.get("sec-fetch-user") == "?1")
        mailed = pending.mailed_at or pending.created_at
        return clicked and (site.now() - mailed).total_seconds() >= CONFIRM_QUIET_SECONDS

    async def confirm(request: Request) -> Response:
        got = snapshot()
        if got is None:
            return unavailable()
        snap, signer = got
        config = snap.config
        assert config is not None
        token = request.path_params["token"]
        found = signer.read("confirm", token, su.CONFIRM_DAYS * 86400, site.now())
        store = site.store(config)
        pending = await run_in_threadpool(store.pending, found[0]) if found else None
        if found is None or len(found) != 2 or pending is None or pending.nonce != found[1]:
            return message(snap, "This link has expired", "Confirmation links work for "
                           f"{su.CONFIRM_DAYS} days, and only the latest one sent to an "
                           "address. Sign up again to get a new one.", status=404,
                           link="/" if config.web.signup else "", link_text="Sign up")
        email, nonce = found
        if request.method == "POST":
            form = await form_of(request)
            if isinstance(form, Response):
                return form
            if not signer.csrf_ok(token, su.one(form, "csrf")):
                return forbidden(snap)
        elif pending.confirmed_at is None and not _a_person(request, signer, pending, email,
                                                            nonce):
            return message(snap, "Confirm your subscription",
                           f"One click to start receiving {config.newsletter.name}.",
                           form_action=f"/confirm/{token}", form_csrf=signer.csrf(token),
                           form_button="Confirm my subscription")
        in_config = any(s.key == email.lower() for s in config.subscribers_view())
        await run_in_threadpool(store.confirm, email, nonce, site.now(), in_config=in_config)

        def welcome() -> None:
            with Ledger.open(config.state_path) as ledger:
                if ledger.suppressed(email) == "unsubscribed":  # their own new opt-in
                    ledger.unsuppress(email)

        await run_in_threadpool(welcome)
        return message(snap, "You are subscribed",
                       f"{config.newsletter.name} will come to {email}; the first email "
                       "brings the papers of the next run.",
                       link=f"/preferences/{signer.make('preferences', email)}",
                       link_text="Change your topics")

    # -- preferences -----------------------------------------------------------------------

    async def from_digest(request: Request) -> Response:
        snap, email = tokens.lookup(request.path_params["token"], site.now().date())
        if snap.config is None:
            return unavailable()
        if email is None:
            return message(snap, "Link not recognised", "This link is not valid. If you "
                           "still get emails, reply to one.", status=404)
        signer = su.Tokens(snap.secret, snap.list_id)
        return RedirectResponse(f"/preferences/{signer.make('preferences', email)}", 303,
                                headers=PAGE_HEADERS)

    async def preferences(request: Request) -> Response:
        got = snapshot()
        if got is None:
            return unavailable()
        snap, signer = got
        config = snap.config
        assert config is not None
        token = request.path_params["token"]
        found = signer.read("preferences", token, su.PREFERENCES_SECONDS, site.now())
        member = await run_in_threadpool(site.member, config, found[0]) if found else None
        if found is None or member is None:
            return message(snap, "This link has expired", "Use the “change your topics” "
                           "link in your latest email.", status=404)
        sub = member.subscriber
        value, new = cookie_of(request)
        saved, error, preview = False, "", None
        form: dict[str, list[str]] | None = None
        if request.method == "POST":
            got_form = await form_of(request)
            if isinstance(got_form, Response):
                return got_form
            form = got_form
            if not signer.csrf_ok(request.cookies.get(CSRF_COOKIE, ""), su.one(form, "csrf")):
                return forbidden(snap)
            if not (await run_in_threadpool(site.allowed, config, signer, "prefs-ip",
                                            _client(request)) and
                    await run_in_threadpool(site.allowed, config, signer, "prefs-address",
                                            sub.email)):
                return message(snap, "Too many changes", "Please try again in an hour.",
                               status=429)
            try:
                prefs = su.read_prefs(form)
                if su.one(form, "action") == "preview":
                    preview = await preview_of(config, prefs)
                else:
                    await run_in_threadpool(_save, site.store(config), member, prefs,
                                            site.now())
                    saved, form = True, None
                    sub = prefs.subscriber(sub.email)
            except su.FormError as e:
                error = str(e)
        current = su.Prefs(sub.topics, sub.exclude, sub.authors, sub.frequency, sub.weekday,
                           sub.paused)
        if preview is None:
            preview = await preview_of(config, current)
        with Ledger.open_readonly(config.state_path) as ledger:
            unsubscribed = ledger.suppressed(sub.email) is not None
        rtoken = signer.make("resubscribe", sub.email)
        response = page(
            "prefs.html.j2", snap, 400 if error else 200, title="Your preferences",
            masked=_masked(sub.email),
            source=member.source, saved=saved, error=error, unsubscribed=unsubscribed,
            resubscribe_action=f"/resubscribe/{rtoken}", resubscribe_csrf=signer.csrf(rtoken),
            action=f"/preferences/{token}", csrf=signer.csrf(value), preview=preview,
            values=_values(form) if form is not None else _values(prefs=current),
            unsubscribe_url="/unsubscribe/" + unsubscribe_token(snap.secret, sub.email,
                                                                snap.list_id))
        return with_cookie(response, request, value, new)

    async def resubscribe(request: Request) -> Response:
        got = snapshot()
        if got is None:
            return unavailable()
        snap, signer = got
        config = snap.config
        assert config is not None
        token = request.path_params["token"]
        found = signer.read("resubscribe", token, su.RESUBSCRIBE_SECONDS, site.now())
        form = await form_of(request)
        if isinstance(form, Response):
            return form
        if found is None:
            return message(snap, "This link has expired", "Sign up again on the front "
                           "page.", status=404)
        if not signer.csrf_ok(token, su.one(form, "csrf")):
            return forbidden(snap)

        def undo() -> bool:
            with Ledger.open(config.state_path) as ledger:
                if ledger.suppressed(found[0]) != "unsubscribed":
                    return False  # bounces stay: the operator decides
                return ledger.unsuppress(found[0])

        await run_in_threadpool(undo)
        return message(snap, "Welcome back", f"{config.newsletter.name} will come to "
                       f"{_masked(found[0])} again from the next run.")

    async def privacy(_request: Request) -> Response:
        got = snapshot()
        if got is None:
            return unavailable()
        snap, _ = got
        assert snap.config is not None
        return message(snap, "Privacy", *privacy_text(snap.config))

    def after_unsubscribe(snap: Snapshot, email: str) -> str:
        signer = su.Tokens(snap.secret, snap.list_id)
        rtoken = signer.make("resubscribe", email)
        return (f"<form method=\"post\" action=\"/resubscribe/{rtoken}\"><input type=\"hidden\" "
                f"name=\"csrf\" value=\"{signer.csrf(rtoken)}\"><p>Clicked by mistake?</p>"
                "<button type=\"submit\">Subscribe again</button></form>")

    routes = [Route("/", signup_page, methods=["GET"]), Route("/", signup, methods=["POST"]),
              Route("/preview", preview, methods=["POST"]),
              Route("/assets/preview.js", script, methods=["GET"]),
              Route("/confirm/{token}", confirm, methods=["GET", "POST"]),
              Route("/unsubscribe/{token}/topics", from_digest, methods=["GET"]),
              Route("/preferences/{token}", preferences, methods=["GET", "POST"]),
              Route("/resubscribe/{token}", resubscribe, methods=["POST"]),
              Route("/privacy", privacy, methods=["GET"])]
    return create_app(tokens, now=now, routes=routes, after_unsubscribe=after_unsubscribe)


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
    "you and when (so that none is sent twice).",
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
