"""The self-service pages of `digest-mailer web`: sign-up (web_signup.py), the preferences
page every digest links to (/unsubscribe/<token>/topics -> /preferences/<token>), the
re-subscribe offer after an unsubscribe, /privacy. The unsubscribe service itself is web.py."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from digest_mailer import signup as su
from digest_mailer.message import unsubscribe_token
from digest_mailer.store import Ledger
from digest_mailer.web import Snapshot, Tokens, create_app
from digest_mailer.web_signup import confirm, preview, script, signup, signup_page
from digest_mailer.web_site import (
    CSRF_COOKIE,
    PAGE_HEADERS,
    Site,
    _client,
    _masked,
    _save,
    _values,
    privacy_text,
)

logger = logging.getLogger(__name__)


# -- preferences -----------------------------------------------------------------------


async def from_digest(site: Site, request: Request) -> Response:
    token = request.path_params["token"]
    snap, email = site.tokens.lookup(token, site.now().date())
    if email is None and snap.config is not None:
        await run_in_threadpool(site.tokens.catch_up)
        snap, email = site.tokens.lookup(token, site.now().date())
    if snap.config is None:
        return site.unavailable()
    if email is None:
        return site.message(snap, "Link not recognised", "This link is not valid. If you "
                            "still get emails, reply to one.", status=404)
    signer = su.Tokens(snap.secret, snap.list_id)
    return RedirectResponse(f"/preferences/{signer.make('preferences', email)}", 303,
                            headers=PAGE_HEADERS)


async def preferences(site: Site, request: Request) -> Response:
    got = site.ready()
    if isinstance(got, Response):
        return got
    snap, signer, config = got
    token = request.path_params["token"]
    found = signer.read("preferences", token, su.PREFERENCES_SECONDS, site.now())
    member = await run_in_threadpool(site.member, config, found[0]) if found else None
    if found is None or member is None:
        return site.message(snap, "This link has expired", "Use the “change your topics” "
                            "link in your latest email.", status=404)
    sub = member.subscriber
    value, new = site.cookie_of(request)
    saved, error, preview = False, "", None
    form: dict[str, list[str]] | None = None
    if request.method == "POST":
        got_form = await site.form_of(request)
        if isinstance(got_form, Response):
            return got_form
        form = got_form
        if not signer.csrf_ok(request.cookies.get(CSRF_COOKIE, ""), su.one(form, "csrf")):
            return site.forbidden(snap)
        if not (await run_in_threadpool(site.allowed, config, signer, "prefs-ip",
                                        _client(request)) and
                await run_in_threadpool(site.allowed, config, signer, "prefs-address",
                                        sub.email)):
            return site.message(snap, "Too many changes", "Please try again in an hour.",
                                status=429)
        try:
            prefs = su.read_prefs(form)
            if su.one(form, "action") == "preview":
                preview = await site.preview_of(config, prefs)
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
        preview = await site.preview_of(config, current)
    with Ledger.open_readonly(config.state_target) as ledger:
        unsubscribed = ledger.suppressed(sub.email) is not None
    rtoken = signer.make("resubscribe", sub.email)
    response = site.page(
        "prefs.html.j2", snap, 400 if error else 200, title="Your preferences",
        masked=_masked(sub.email),
        source=member.source, saved=saved, error=error, unsubscribed=unsubscribed,
        resubscribe_action=f"/resubscribe/{rtoken}", resubscribe_csrf=signer.csrf(rtoken),
        action=f"/preferences/{token}", csrf=signer.csrf(value), preview=preview,
        values=_values(form) if form is not None else _values(prefs=current),
        unsubscribe_url="/unsubscribe/" + unsubscribe_token(snap.secret, sub.email,
                                                            snap.list_id))
    return site.with_cookie(response, request, value, new)


async def resubscribe(site: Site, request: Request) -> Response:
    got = site.ready()
    if isinstance(got, Response):
        return got
    snap, signer, config = got
    token = request.path_params["token"]
    found = signer.read("resubscribe", token, su.RESUBSCRIBE_SECONDS, site.now())
    form = await site.form_of(request)
    if isinstance(form, Response):
        return form
    if found is None:
        return site.message(snap, "This link has expired", "Sign up again on the front "
                            "page.", status=404)
    if not signer.csrf_ok(token, su.one(form, "csrf")):
        return site.forbidden(snap)

    def undo() -> bool:
        with Ledger.open(config.state_target) as ledger:
            if ledger.suppressed(found[0]) != "unsubscribed":
                return False  # bounces stay: the operator decides
            return ledger.unsuppress(found[0])

    await run_in_threadpool(undo)
    return site.message(snap, "Welcome back", f"{config.newsletter.name} will come to "
                        f"{_masked(found[0])} again from the next run.")


async def privacy(site: Site, _request: Request) -> Response:
    got = site.ready()
    if isinstance(got, Response):
        return got
    snap, _, config = got
    return site.message(snap, "Privacy", *privacy_text(config))


def after_unsubscribe(snap: Snapshot, email: str) -> str:
    signer = su.Tokens(snap.secret, snap.list_id)
    rtoken = signer.make("resubscribe", email)
    return (f"<form method=\"post\" action=\"/resubscribe/{rtoken}\"><input type=\"hidden\" "
            f"name=\"csrf\" value=\"{signer.csrf(rtoken)}\"><p>Clicked by mistake?</p>"
            "<button type=\"submit\">Subscribe again</button></form>")


def create_site(tokens: Tokens, env: Mapping[str, str], *,
                now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Starlette:
    """The unsubscribe service with the self-service pages."""
    site = Site(tokens, env, now)
    pages = [("/", signup_page, "GET"), ("/", signup, "POST"), ("/preview", preview, "POST"),
             ("/assets/preview.js", script, "GET"), ("/confirm/{token}", confirm, "GET POST"),
             ("/unsubscribe/{token}/topics", from_digest, "GET"),
             ("/preferences/{token}", preferences, "GET POST"),
             ("/resubscribe/{token}", resubscribe, "POST"), ("/privacy", privacy, "GET")]
    routes = [Route(path, partial(handler, site), methods=methods.split())
              for path, handler, methods in pages]
    return create_app(tokens, now=now, routes=routes, after_unsubscribe=after_unsubscribe)
