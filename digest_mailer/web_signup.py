"""Sign-up with double opt-in: the page (/), its form, the live preview (/preview) and the
confirmation link (/confirm/<token>).

The form carries a CSRF field bound to a cookie of this browser; the confirmation button's is
bound to the signed token in its URL. Sign-up answers the same whatever the address (known,
new, rate limited, honeypot)."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from digest_mailer import signup as su
from digest_mailer.errors import DigestMailerError
from digest_mailer.store import Ledger
from digest_mailer.web_mail import asset, confirmation, render_page, send
from digest_mailer.web_site import (
    CONFIRM_QUIET_SECONDS,
    CSRF_COOKIE,
    MAIL_EVERY,
    PAGE_HEADERS,
    SIGNUP_COOKIE,
    Ready,
    Site,
    _client,
    _values,
    base_url,
    render_escape,
)

logger = logging.getLogger(__name__)


# -- sign-up ---------------------------------------------------------------------------

def _open(site: Site) -> Ready | Response:
    """Site.ready(), and the 404 page while sign-up is switched off ([web] signup)."""
    got = site.ready()
    if not isinstance(got, Response) and not got.config.web.signup:
        return site.message(got.snap, "Sign-up is closed", "This newsletter takes no new "
                            "subscribers here.", status=404)
    return got


async def signup_page(site: Site, request: Request) -> Response:
    got = _open(site)
    if isinstance(got, Response):
        return got
    snap, signer, _ = got
    value, new = site.cookie_of(request)
    return site.with_cookie(site.page("signup.html.j2", snap, title="Subscribe", error="",
                            csrf=signer.csrf(value), values=_values(), preview=None),
                       request, value, new)


async def signup(site: Site, request: Request) -> Response:
    got = _open(site)
    if isinstance(got, Response):
        return got
    snap, signer, config = got
    form = await site.form_of(request)
    if isinstance(form, Response):
        return form
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not signer.csrf_ok(cookie, su.one(form, "csrf")):
        return site.forbidden(snap)
    done = site.message(snap, "Check your inbox", "If the address can receive email, a "
                        "message with a confirmation link is on its way. Click it to start "
                        "receiving the newsletter.", "Nothing is sent until you do.")

    def again(error: str, status: int, preview: su.Preview | None = None) -> Response:
        return site.page("signup.html.j2", snap, status, title="Subscribe", error=error,
                         csrf=signer.csrf(cookie), values=_values(form), preview=preview)

    if su.one(form, "website"):  # the honeypot: bots fill every field
        logger.info("sign-up: honeypot filled, ignored")
        return done
    try:
        prefs = su.read_prefs(form)
        if su.one(form, "action") == "preview":
            return again("", 200, await site.preview_of(config, prefs))
        email = su.read_email(form)
    except su.FormError as e:
        return again(str(e), 400)
    if not await run_in_threadpool(site.allowed, config, signer, "signup-ip",
                                   _client(request)):
        return site.message(snap, "Too many sign-ups", "Too many sign-ups came from your "
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
            await run_in_threadpool(send, config, site.env, msg)
        except DigestMailerError as e:
            logger.error("sign-up: cannot send the confirmation email: %s", e)
            await run_in_threadpool(store.unmail, email)
            return site.message(snap, "Please try again later", "The confirmation email "
                                "could not be sent just now.", status=503)
    done.set_cookie(SIGNUP_COOKIE, signer.csrf(f"browser {email.lower()} {nonce}"),
                    max_age=su.CONFIRM_DAYS * 86400, httponly=True, samesite="lax",
                    secure=request.url.scheme == "https", path="/confirm/")
    return done


async def preview(site: Site, request: Request) -> Response:
    got = site.ready()
    if isinstance(got, Response):
        return got
    _, signer, config = got
    form = await site.form_of(request)
    if isinstance(form, Response):
        return form
    if not signer.csrf_ok(request.cookies.get(CSRF_COOKIE, ""), su.one(form, "csrf")):
        return Response("expired form", 403, headers=PAGE_HEADERS)
    if not await run_in_threadpool(site.allowed, config, signer, "preview-ip",
                                   _client(request)):
        return Response("too many previews", 429, headers=PAGE_HEADERS)
    try:
        prefs = su.read_prefs(form)
    except su.FormError as e:
        return HTMLResponse(f"<p class=\"warning\">{render_escape(str(e))}</p>",
                            headers=PAGE_HEADERS)
    html = render_page("preview.html.j2", preview=await site.preview_of(config, prefs))
    return HTMLResponse(html, headers=PAGE_HEADERS)


async def script(site: Site, _request: Request) -> Response:
    return Response(asset("preview.js"), media_type="text/javascript",
                    headers={**PAGE_HEADERS, "Cache-Control": "max-age=3600"})


# -- confirmation ----------------------------------------------------------------------


def _a_person(site: Site, request: Request, signer: su.Tokens, pending: Any, email: str, nonce: str
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


async def confirm(site: Site, request: Request) -> Response:
    got = site.ready()
    if isinstance(got, Response):
        return got
    snap, signer, config = got
    token = request.path_params["token"]
    found = signer.read("confirm", token, su.CONFIRM_DAYS * 86400, site.now())
    store = site.store(config)
    pending = await run_in_threadpool(store.pending, found[0]) if found else None
    if found is None or len(found) != 2 or pending is None or pending.nonce != found[1]:
        return site.message(snap, "This link has expired", "Confirmation links work for "
                            f"{su.CONFIRM_DAYS} days, and only the latest one sent to an "
                            "address. Sign up again to get a new one.", status=404,
                            link="/" if config.web.signup else "", link_text="Sign up")
    email, nonce = found
    used = site.message(snap, "Already confirmed", "This link has been used. Your topics "
                        "and the way to unsubscribe are in every email; to subscribe again "
                        "after unsubscribing, sign up again.", link="/" if
                        config.web.signup else "", link_text="Sign up")
    if pending.confirmed_at is not None:
        # A link works once: opened again later (by a scanner re-checking old mail, or by the
        # person) it must not undo an unsubscribe or bring back a removed subscriber.
        return used
    if request.method == "POST":
        form = await site.form_of(request)
        if isinstance(form, Response):
            return form
        if not signer.csrf_ok(token, su.one(form, "csrf")):
            return site.forbidden(snap)
    elif not _a_person(site, request, signer, pending, email,
                                                        nonce):
        return site.message(snap, "Confirm your subscription",
                            f"One click to start receiving {config.newsletter.name}.",
                            form_action=f"/confirm/{token}", form_csrf=signer.csrf(token),
                            form_button="Confirm my subscription")
    in_config = any(s.key == email.lower() for s in config.subscribers_view())
    if await run_in_threadpool(store.confirm, email, nonce, site.now(),
                               in_config=in_config) is None:
        return used  # another click took it a moment ago
    await run_in_threadpool(site.tokens.poll)  # their links work from the first email on

    def welcome() -> None:
        with Ledger.open(config.state_target) as ledger:
            if ledger.suppressed(email) == "unsubscribed":  # their own new opt-in
                ledger.unsuppress(email)

    await run_in_threadpool(welcome)
    return site.message(snap, "You are subscribed",
                        f"{config.newsletter.name} will come to {email}; the first email "
                        "brings the papers of the next run.",
                        link=f"/preferences/{signer.make('preferences', email)}",
                        link_text="Change your topics")

