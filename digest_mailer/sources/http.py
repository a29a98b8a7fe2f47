"""Fetching bytes over HTTP: a total deadline per request and one for a whole fetch, a User-Agent,
size caps on the body as sent and as decoded, a redirect limit, retries with backoff. Every failure
is a SourceError."""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from digest_mailer import __version__
from digest_mailer.errors import SourceError
from digest_mailer.sources.transport import Deadline, DeadlineTransport, environment_proxies

logger = logging.getLogger(__name__)

USER_AGENT = f"digest-mailer/{__version__} (+https://pypi.org/project/digest-mailer/)"
MAX_REDIRECTS = 5
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 120.0
_HINT = "check [source] location in the config"
# A whole fetch (every day, page, retry and wait of one source) is over within this many
# `timeout`s. Without it the worst case is days x pages x tries x timeout: at the defaults
# (2 days, up to 50 pages, 4 tries, 30 s) over three hours, at the config's limits months.
FETCH_DEADLINE_FACTOR = 4


class HttpFetcher:
    """One HTTP client for a run. Each request (redirects included) is over within `timeout`
    seconds, whatever the server does; inside `whole_fetch()` all requests, retries and waits
    together are over within FETCH_DEADLINE_FACTOR x `timeout`. `sleep` is passed in so tests
    need not wait for backoff."""

    def __init__(self, *, timeout: float = 30.0, retries: int = 3, max_bytes: int = 20_000_000,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self._timeout = timeout
        self._retries = retries
        self._max_bytes = max_bytes
        self._backoff = backoff
        self._sleep = sleep
        self._deadline = Deadline()
        self._fetch_at = math.inf  # time.monotonic() when the current whole fetch must be over
        self._secure = False  # the current request was made over https
        self._shown = ""  # the current request, as error messages show it
        # The body is decoded here, not by httpx, so a gzip bomb stops at max_bytes.
        self._client = httpx.Client(
            transport=DeadlineTransport(self._deadline, proxies=environment_proxies()),
            timeout=httpx.Timeout(timeout),
            follow_redirects=True, max_redirects=MAX_REDIRECTS,
            event_hooks={"request": [self._no_downgrade]},
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"})

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def whole_fetch(self) -> Iterator[None]:
        """Every request made inside shares one more deadline: FETCH_DEADLINE_FACTOR x timeout."""
        self._fetch_at = time.monotonic() + self._fetch_total
        try:
            yield
        finally:
            self._fetch_at = math.inf

    @property
    def _fetch_total(self) -> float:
        return self._timeout * FETCH_DEADLINE_FACTOR

    def _over(self, shown: str, problem: str, cause: Exception | None = None) -> SourceError:
        error = SourceError(
            f"{shown}: {problem}; the whole fetch is over its {self._fetch_total:g}s deadline "
            f"({FETCH_DEADLINE_FACTOR} x [source] timeout)",
            hint="the feed is slow or asks to wait; the next run tries again (or raise "
                 "[source] timeout)")
        error.__cause__ = cause
        return error

    def get(self, url: str, params: Mapping[str, str | int] | None = None) -> bytes:
        shown = _shown(url, params)
        attempt = 0
        while True:
            attempt += 1
            cause: Exception | None = None
            retry_after: float | None = None
            if time.monotonic() >= self._fetch_at:
                raise self._over(shown, "not requested")
            try:
                status, body, retry_after = self._get_once(url, params, shown)
            except httpx.TimeoutException as e:
                if time.monotonic() >= self._fetch_at:
                    raise self._over(shown, "cut off", e) from e
                problem, cause = f"timed out after {self._timeout:g}s", e
            except httpx.TooManyRedirects as e:
                raise SourceError(f"{shown}: more than {MAX_REDIRECTS} redirects (a loop?)",
                                  hint=_HINT) from e
            except httpx.UnsupportedProtocol as e:
                raise SourceError(f"{shown}: redirected to a URL that is not http(s) "
                                  f"({_reason(e)})", hint=_HINT) from e
            except httpx.RemoteProtocolError as e:
                problem, cause = f"the server broke HTTP ({_reason(e)})", e
            except httpx.TransportError as e:
                problem, cause = f"unreachable ({_reason(e)})", e
            except httpx.InvalidURL as e:
                raise SourceError(f"{shown}: not a valid URL ({_reason(e)})", hint=_HINT) from e
            except httpx.HTTPError as e:  # anything else httpx may add: one clear line
                problem, cause = f"failed ({type(e).__name__}: {_reason(e)})", e
            else:
                if 200 <= status < 300:
                    return body
                problem = f"HTTP {status}"
                if status not in _RETRY_STATUS:
                    raise SourceError(f"{shown}: {problem}", hint=_HINT)
            if attempt > self._retries:
                raise SourceError(f"{shown}: {problem} (gave up after {attempt} attempts)",
                                  hint="the feed may be down; the next run tries again"
                                  ) from cause
            # Never sooner than the backoff: a Retry-After of 0 or in the past would otherwise
            # turn a 429 into a tight loop against a server that is already overloaded.
            delay = max(retry_after or 0.0, self._backoff * 2 ** (attempt - 1))
            if time.monotonic() + delay >= self._fetch_at:
                raise self._over(shown, f"{problem}, and waiting {delay:g}s to retry would pass "
                                 "it", cause)
            logger.warning("%s: %s; retrying in %.1fs (%d/%d)", shown, problem, delay, attempt,
                           self._retries)
            self._sleep(delay)

    def _no_downgrade(self, request: httpx.Request) -> None:
        """Called before every request, redirects included: a feed asked for over https is not
        then read over plain http, where anyone on the path could rewrite it."""
        if request.url.scheme == "https":
            self._secure = True
        elif self._secure:
            raise SourceError(f"{self._shown}: redirected from https to plain http "
                              f"({str(request.url)[:200]})",
                              hint="the feed's server downgrades; ask its owner, or use the http "
                                   "URL if you accept that")

    def _get_once(self, url: str, params: Mapping[str, str | int] | None, shown: str
                  ) -> tuple[int, bytes, float | None]:
        self._secure, self._shown = False, shown
        self._deadline.start(min(self._timeout, self._fetch_at - time.monotonic()))
        with self._client.stream("GET", url, params=params) as response:
            if not 200 <= response.status_code < 300:
                return response.status_code, b"", _retry_after(response.headers)
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isascii() and declared.isdigit() and \
                    (len(declared) > 15 or int(declared) > self._max_bytes):
                raise SourceError(f"{shown}: the response is {_size(declared)} bytes, over "
                                  f"source.max_bytes ({self._max_bytes:,})",
                                  hint="raise [source] max_bytes if the feed is that big")
            encoding = response.headers.get("Content-Encoding", "").strip().lower()
            return response.status_code, self._body(response.iter_raw(), encoding, shown), None

    def _body(self, raw: Iterable[bytes], encoding: str, shown: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        decoded = " once decoded" if encoding else ""
        for chunk in _decoded(self._capped(raw, shown), encoding, self._max_bytes, shown):
            size += len(chunk)
            if size > self._max_bytes:
                raise SourceError(f"{shown}: the response is over source.max_bytes "
                                  f"({self._max_bytes:,} bytes{decoded})",
                                  hint="raise [source] max_bytes if the feed is that big")
            chunks.append(chunk)
        return b"".join(chunks)

    def _capped(self, raw: Iterable[bytes], shown: str) -> Iterator[bytes]:
        size = 0
        for chunk in raw:
            size += len(chunk)
            if size > self._max_bytes:
                raise SourceError(f"{shown}: the response is over source.max_bytes "
                                  f"({self._max_bytes:,} bytes)",
                                  hint="raise [source] max_bytes if the feed is that big")
            yield chunk


_GZIP_MAGIC = b"\x1f\x8b"


def _inflater(encoding: str, head: bytes) -> Any:
    """A decompressor for a stream starting with `head` (2 bytes): gzip or zlib-wrapped data
    (told apart by their headers), or raw deflate, which some servers send as "deflate"."""
    if encoding == "deflate" and head != _GZIP_MAGIC and \
            not (head[0] & 0x0F == 8 and int.from_bytes(head[:2]) % 31 == 0):
        return zlib.decompressobj(-zlib.MAX_WBITS)
    return zlib.decompressobj(zlib.MAX_WBITS | 32)


def _decoded(raw: Iterable[bytes], encoding: str, cap: int, shown: str) -> Iterator[bytes]:
    """The body decoded as Content-Encoding says, never more than `cap` + 1 bytes at a time.
    Several gzip members in a row are one stream (RFC 1952); bytes after the last are ignored."""
    if encoding in ("", "identity"):
        yield from raw
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise SourceError(f"{shown}: the server sent Content-Encoding {encoding[:40]!r}, which "
                          "was not asked for", hint="the server or a proxy is misbehaving")
    decoder: Any = None
    pending = b""  # input not yet taken by a decoder
    trailing = False  # past the last member: the rest is ignored
    try:
        for chunk in raw:
            pending += chunk
            while pending and not trailing:
                if decoder is None or decoder.eof:
                    if len(pending) < 2:
                        break
                    if decoder is not None and pending[:2] != _GZIP_MAGIC:
                        trailing = True
                        break
                    decoder = _inflater(encoding, pending[:2])
                yield decoder.decompress(pending, cap + 1)
                pending = decoder.unused_data + decoder.unconsumed_tail if decoder.eof \
                    else decoder.unconsumed_tail
            if trailing:
                pending = b""
        if decoder is not None and not decoder.eof:
            yield decoder.flush()
    except zlib.error as e:
        raise SourceError(f"{shown}: the body is not valid {encoding} as its Content-Encoding "
                          f"says ({e})", hint="the server or a proxy is misbehaving") from e
    if decoder is None or not decoder.eof:
        raise SourceError(f"{shown}: the {encoding} body is cut short",
                          hint="the server or a proxy is misbehaving; the next run tries again")


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
        wait = when.timestamp() - time.time()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(max(wait, 0.0), _MAX_RETRY_AFTER)


def _size(digits: str) -> str:
    return f"{int(digits):,}" if len(digits) <= 15 else f"a {len(digits)}-digit number of"


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


def _shown(url: str, params: Mapping[str, str | int] | None) -> str:
    try:
        return str(httpx.URL(url, params=params)) if params else url
    except httpx.InvalidURL:
        return url
