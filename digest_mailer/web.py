"""`digest-mailer web`: one-click unsubscribe (RFC 8058).

POST /unsubscribe/<token> with the field `List-Unsubscribe=One-Click` (urlencoded or
multipart/form-data, as RFC 8058 says a client should send it) unsubscribes at once: no
cookies, no redirect, idempotent. GET shows a page with a button and never unsubscribes,
since mail scanners follow links. An unsubscribe lands in the ledger's suppression list,
which every run reads before each message.

The config is read by a watcher thread, never on a request: a request looks its token up in
the last snapshot, one dict lookup, however many subscribers there are."""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import parse_qs

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from digest_mailer.audience import everyone, store_revision
from digest_mailer.config import Config, load_config
from digest_mailer.errors import DigestMailerError, StoreError
from digest_mailer.message import list_id, unsubscribe_token
from digest_mailer.pipeline import unsubscribe_secret
from digest_mailer.store import Ledger, StoreTarget

logger = logging.getLogger(__name__)

MAX_BODY = 4096
# A client has this long to send a request's headers, then as long again for its body (4 KB at
# most): a client dripping a byte a second held a connection, and its memory, for ever.
REQUEST_SECONDS = 10.0
MAX_CONNECTIONS = 200  # beyond these, 503 at once
# Links sent before tokens were bound to the list carry the address-only form. They keep
# working until this date (about six months after the change): mail older than that is rarely
# acted on, and after it such a link shows the "not recognised" page, which says to reply.
LEGACY_TOKENS_UNTIL = date(2027, 6, 1)
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The config as last read, and every subscriber's tokens; or why it could not be read."""

    config: Config | None = None
    error: str | None = "the config has not been read yet"
    secret: bytes = b""
    list_id: str = ""
    by_token: Mapping[str, str] = field(default_factory=dict)
    by_legacy_token: Mapping[str, str] = field(default_factory=dict)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class Tokens:
    """token -> address for every subscriber, rebuilt by a watcher thread when the config file
    changes. `refresh` reads it now (at start-up, so a bad config fails the command)."""

    config_path: Path
    env: Mapping[str, str]
    interval: float = 2.0  # seconds between looks at the config file
    load: Callable[[Path], Config] = load_config
    _snapshot: Snapshot = field(default_factory=Snapshot)
    _stamp: tuple[int, int, int] | None = None
    _revision: int = 0  # of the store's self-service subscribers, as last read
    _caught: float = -1.0  # when a missed token last made us look (catch_up)
    _polled: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def refresh(self) -> Snapshot:
        """Read the config and rebuild the tokens; raises DigestMailerError when it cannot."""
        with self._lock:
            stamp = _stamp(self.config_path)
            config = self.load(self.config_path)
            secret = unsubscribe_secret(config, self.env, dry_run=False)
            nl = config.newsletter
            header = list_id(nl.name, config.from_domain, nl.list_id)
            self._revision = store_revision(config.state_target)
            subs = everyone(config)  # the config's subscribers and the store's
            self._snapshot = Snapshot(
                config=config, error=None, secret=secret, list_id=header,
                by_token={unsubscribe_token(secret, s.email, header): s.email for s in subs},
                by_legacy_token={unsubscribe_token(secret, s.email): s.email for s in subs})
            self._stamp, self._polled = stamp, True
            return self._snapshot

    def poll(self) -> None:
        """Reload when the file changed; a config that cannot be read is said once in the log
        and answered with 503 until it is fixed."""
        stamp = _stamp(self.config_path)
        config = self._snapshot.config
        try:
            revision = store_revision(config.state_target) if config is not None else 0
        except DigestMailerError as e:  # the ledger busy or broken: keep the last read
            logger.warning("cannot read the subscriber store: %s", e)
            revision = self._revision
        if self._polled and stamp == self._stamp and revision == self._revision:
            return  # unchanged: still good, or still broken and said so already
        self._polled = True
        try:
            self.refresh()
            logger.info("%s: config read, %d subscriber(s)", self.config_path,
                        len(self._snapshot.by_token))
        except DigestMailerError as e:
            self._stamp = stamp
            self._snapshot = Snapshot(error=str(e))
            logger.error("%s: cannot serve unsubscribe links: %s", self.config_path, e)

    def catch_up(self) -> None:
        """A token not in the map may be a subscriber who confirmed a moment ago, in another
        process: look now rather than at the next poll (at most once a second)."""
        config = self._snapshot.config
        if config is None or time.monotonic() - self._caught < 1.0 or self._lock.locked():
            return  # a reload under way (the watcher's) is not waited for
        self._caught = time.monotonic()
        try:
            moved = store_revision(config.state_target) != self._revision
        except DigestMailerError:
            return
        if moved:
            self.poll()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def watch() -> None:
            while not self._stop.is_set():
                self.poll()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=watch, name="config-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def lookup(self, token: str, today: date) -> tuple[Snapshot, str | None]:
        snap = self._snapshot
        email = snap.by_token.get(token)
        bound = email is not None
        if email is None and today <= LEGACY_TOKENS_UNTIL:
            email = snap.by_legacy_token.get(token)
        # The map finds the candidate; the comparison that decides is constant-time.
        if email is None or not hmac.compare_digest(
                unsubscribe_token(snap.secret, email, snap.list_id if bound else None).encode(),
                token.encode()):
            return snap, None
        return snap, email


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


def _unavailable() -> Response:
    return PlainTextResponse("This service is not available right now; please try again "
                             "later.", status_code=503, headers=HEADERS)


class TooSlow(Exception):
    """The client did not send the body in time."""


async def read_capped(request: Request, cap: int, seconds: float | None = None
                      ) -> bytes | None:
    """The body, or None as soon as it is known to be over `cap` bytes: never read whole.
    TooSlow when it has not all come within `seconds`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(REQUEST_SECONDS if seconds is None else seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    return None
                chunks.append(chunk)
    except TimeoutError as e:
        raise TooSlow from e
    return b"".join(chunks)


def form_fields(content_type: str, body: bytes) -> dict[str, list[str]]:
    """The fields of an urlencoded or a multipart/form-data body."""
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        return parse_qs(body.decode("utf-8", "replace"))
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1",
                                                                              "replace")
    msg = BytesParser(policy=email_policy.HTTP).parsebytes(head + body)
    fields: dict[str, list[str]] = {}
    if not isinstance(msg, EmailMessage) or not msg.is_multipart():
        return fields
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields.setdefault(name, []).append(payload.decode("utf-8", "replace").strip("\r\n"))
    return fields


def _suppress(state: StoreTarget, email: str, when: datetime) -> bool:
    with Ledger.open(state) as ledger:
        return ledger.suppress(email, "unsubscribed", when, "one-click")


def create_app(tokens: Tokens, *, now: Callable[[], datetime] = lambda: datetime.now(UTC),
               routes: Sequence[BaseRoute] = (),
               after_unsubscribe: Callable[[Snapshot, str], str] | None = None) -> Starlette:
    """The unsubscribe service; `routes` adds pages (web_pages.py), `after_unsubscribe` what
    the page after an unsubscribe offers (to subscribe again)."""
    def unknown() -> HTMLResponse:
        return _page("Link not recognised", "<p>This unsubscribe link is not valid. If you "
                     "still get emails, reply to one and ask to be removed.</p>", 404)

    async def find(token: str) -> tuple[Snapshot, str | None]:
        snap, email = tokens.lookup(token, now().date())
        if email is None and snap.config is not None:
            await run_in_threadpool(tokens.catch_up)
            snap, email = tokens.lookup(token, now().date())
        return snap, email

    async def show(request: Request) -> Response:
        snap, email = await find(request.path_params["token"])
        if snap.config is None:
            return _unavailable()
        if email is None:
            return unknown()
        name = html.escape(snap.config.newsletter.name)
        return _page(f"Unsubscribe from {snap.config.newsletter.name}",
                     f"<p>Stop sending {name} to {html.escape(_masked(email))}?</p>"
                     "<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" "
                     "value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>")

    async def unsubscribe(request: Request) -> Response:
        try:
            body = await read_capped(request, MAX_BODY)
        except TooSlow:
            return PlainTextResponse("request body too slow", status_code=408,
                                     headers={**HEADERS, "Connection": "close"})
        if body is None:
            return PlainTextResponse("request too large", status_code=413, headers=HEADERS)
        form = form_fields(request.headers.get("content-type", ""), body)
        # Sent twice by a client that adds it to a form already holding it: still one click.
        if set(form.get("List-Unsubscribe", ())) != {"One-Click"}:
            return PlainTextResponse("expected List-Unsubscribe=One-Click", status_code=400,
                                     headers=HEADERS)
        snap, email = await find(request.path_params["token"])
        if snap.config is None:
            return _unavailable()
        if email is None:
            return unknown()
        state = snap.config.state_target
        try:
            # In a worker thread: the ledger may be busy with a run for a while (SQLite waits
            # for its lock), and the event loop must keep answering everyone else.
            new = await run_in_threadpool(_suppress, state, email, now())
        except (StoreError, OSError) as e:
            logger.error("%s: cannot record an unsubscribe: %s", state.label, e)
            return _unavailable()
        if new:
            logger.info("unsubscribed %s", _masked(email))
        return _page("You are unsubscribed",
                     f"<p>{html.escape(snap.config.newsletter.name)} will not be sent to "
                     f"{html.escape(_masked(email))} any more.</p>" +
                     (after_unsubscribe(snap, email) if after_unsubscribe else ""))

    async def health(_request: Request) -> Response:
        if tokens.snapshot.config is None:
            return PlainTextResponse("config not readable; see the log", status_code=503,
                                     headers=HEADERS)
        return PlainTextResponse("ok", headers=HEADERS)

    async def on_error(_request: Request, exc: Exception) -> Response:
        logger.error("%s", exc)
        return _unavailable()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        tokens.poll()  # before the first request, unless `refresh` already read it
        tokens.start()
        try:
            yield
        finally:
            tokens.stop()

    return Starlette(routes=[Route("/unsubscribe/{token}", show, methods=["GET"]),
                             Route("/unsubscribe/{token}", unsubscribe, methods=["POST"]),
                             Route("/healthz", health), *routes],
                     exception_handlers={DigestMailerError: on_error}, lifespan=lifespan)


class DeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers: uvicorn has none
    (its keep-alive timeout stops at the first byte), so a client sending a header byte now
    and then kept its connection open for ever."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(REQUEST_SECONDS, self._expired)

    def _expired(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and self.conn.their_state in (h11.IDLE, h11.DONE) and \
                not self.transport.is_closing():
            self.transport.close()


def server_config(app: Starlette, **options: object) -> uvicorn.Config:
    """How the service runs: our HTTP protocol, bounded connections, no Server header."""
    return uvicorn.Config(app, http=DeadlineProtocol, limit_concurrency=MAX_CONNECTIONS,
                          server_header=False, **options)  # type: ignore[arg-type]


def listen(host: str, port: int) -> socket.socket:
    """A bound listening socket, or one clear error (a port in use, an address not here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise DigestMailerError(f"cannot listen on {host}:{port}: {e.strerror}",
                                hint="another process may hold that port: choose another with "
                                     "--port, or stop it") from e
    return sock
