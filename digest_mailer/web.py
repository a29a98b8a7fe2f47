"""`digest-mailer web`: one-click unsubscribe (RFC 8058).

POST /unsubscribe/<token> with the body `List-Unsubscribe=One-Click` unsubscribes at once: no
cookies, no redirect, idempotent. GET shows a page with a button and never unsubscribes, since
mail scanners follow links. An unsubscribe lands in the ledger's suppression list, which every
run reads before each message."""

from __future__ import annotations

import hmac
import html
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from digest_mailer.config import Config, load_config
from digest_mailer.errors import DigestMailerError
from digest_mailer.message import unsubscribe_token
from digest_mailer.pipeline import unsubscribe_secret
from digest_mailer.store import Ledger

logger = logging.getLogger(__name__)

MAX_BODY = 4096
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
}


@dataclass
class Tokens:
    """token -> address for every subscriber; rebuilt when the config file changes."""

    config_path: Path
    env: Mapping[str, str]
    _stamp: float = -1.0
    _config: Config | None = None
    _secret: bytes = b""
    _by_token: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> Config:
        with self._lock:
            stamp = self.config_path.stat().st_mtime
            if self._config is None or stamp != self._stamp:
                config = load_config(self.config_path)
                secret = unsubscribe_secret(config, self.env, dry_run=False)
                self._by_token = {unsubscribe_token(secret, s.email): s.email
                                  for s in config.subscribers_view()}
                self._config, self._secret, self._stamp = config, secret, stamp
            return self._config

    def lookup(self, token: str) -> tuple[Config, str | None]:
        config = self.refresh()
        email = self._by_token.get(token)
        # The map finds the candidate; the comparison that decides is constant-time.
        if email is None or not hmac.compare_digest(
                unsubscribe_token(self._secret, email).encode(), token.encode()):
            return config, None
        return config, email


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;"
           f"max-width:32em;margin:3em auto;padding:0 1em;color:#1f2937}}button{{font-size:1em;"
           f"padding:.6em 1.2em;border:0;border-radius:6px;background:#4f46e5;color:#fff}}"
           f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return HTMLResponse(doc, status_code=status, headers=HEADERS)


def _masked(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}{'•' * max(len(local) - 1, 1)}@{domain}"


def create_app(tokens: Tokens, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
               ) -> Starlette:
    def unknown() -> HTMLResponse:
        return _page("Link not recognised", "<p>This unsubscribe link is not valid. If you "
                     "still get emails, reply to one and ask to be removed.</p>", 404)

    async def show(request: Request) -> Response:
        config, email = tokens.lookup(request.path_params["token"])
        if email is None:
            return unknown()
        name = html.escape(config.newsletter.name)
        return _page(f"Unsubscribe from {config.newsletter.name}",
                     f"<p>Stop sending {name} to {html.escape(_masked(email))}?</p>"
                     "<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" "
                     "value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>")

    async def unsubscribe(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("request too large", status_code=413, headers=HEADERS)
        form = parse_qs(body.decode("utf-8", "replace"))
        if form.get("List-Unsubscribe") != ["One-Click"]:
            return PlainTextResponse("expected List-Unsubscribe=One-Click", status_code=400,
                                     headers=HEADERS)
        config, email = tokens.lookup(request.path_params["token"])
        if email is None:
            return unknown()
        with Ledger.open(config.state_path) as ledger:
            new = ledger.suppress(email, "unsubscribed", now(), "one-click")
        if new:
            logger.info("unsubscribed %s", _masked(email))
        return _page("You are unsubscribed",
                     f"<p>{html.escape(config.newsletter.name)} will not be sent to "
                     f"{html.escape(_masked(email))} any more.</p>")

    async def health(_request: Request) -> Response:
        return PlainTextResponse("ok", headers=HEADERS)

    async def on_error(_request: Request, exc: Exception) -> Response:
        logger.error("%s", exc)
        return PlainTextResponse("the service is misconfigured; see its log", status_code=503,
                                 headers=HEADERS)

    return Starlette(routes=[Route("/unsubscribe/{token}", show, methods=["GET"]),
                             Route("/unsubscribe/{token}", unsubscribe, methods=["POST"]),
                             Route("/healthz", health)],
                     exception_handlers={DigestMailerError: on_error})
