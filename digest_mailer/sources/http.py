"""Fetching bytes over HTTP: timeouts, a User-Agent, a size cap, retries with backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

import httpx

from digest_mailer import __version__
from digest_mailer.errors import SourceError

logger = logging.getLogger(__name__)

USER_AGENT = f"digest-mailer/{__version__} (+https://pypi.org/project/digest-mailer/)"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 120.0


class HttpFetcher:
    """One HTTP client for a run. `sleep` is passed in so tests need not wait for backoff."""

    def __init__(self, *, timeout: float = 30.0, retries: int = 3, max_bytes: int = 20_000_000,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                 client: httpx.Client | None = None) -> None:
        self._timeout = timeout
        self._retries = retries
        self._max_bytes = max_bytes
        self._backoff = backoff
        self._sleep = sleep
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=True, max_redirects=5,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"})
        self.requests = 0

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get(self, url: str, params: Mapping[str, str | int] | None = None) -> bytes:
        attempt = 0
        while True:
            attempt += 1
            try:
                status, body, retry_after = self._get_once(url, params)
            except httpx.TimeoutException as e:
                problem, retry_after = f"timed out after {self._timeout:g}s", None
                cause: Exception | None = e
            except httpx.TransportError as e:
                problem, retry_after, cause = f"unreachable ({_reason(e)})", None, e
            else:
                if status < 400:
                    return body
                problem, cause = f"HTTP {status}", None
                if status not in _RETRY_STATUS:
                    raise SourceError(f"{_shown(url, params)}: {problem}",
                                      hint="check [source] location in the config")
            if attempt > self._retries:
                raise SourceError(
                    f"{_shown(url, params)}: {problem} (gave up after {attempt} attempts)",
                    hint="the feed may be down; the next run tries again") from cause
            delay = retry_after if retry_after is not None else self._backoff * 2 ** (attempt - 1)
            logger.warning("%s: %s; retrying in %.1fs (%d/%d)", _shown(url, params), problem,
                           delay, attempt, self._retries)
            self._sleep(delay)

    def _get_once(self, url: str, params: Mapping[str, str | int] | None
                  ) -> tuple[int, bytes, float | None]:
        self.requests += 1
        with self._client.stream("GET", url, params=params) as response:
            if response.status_code >= 400:
                return response.status_code, b"", _retry_after(response.headers)
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self._max_bytes:
                raise SourceError(f"{_shown(url, params)}: the response is {int(declared):,} "
                                  f"bytes, over source.max_bytes ({self._max_bytes:,})")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self._max_bytes:
                    raise SourceError(f"{_shown(url, params)}: the response is over "
                                      f"source.max_bytes ({self._max_bytes:,} bytes)")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks), None


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), _MAX_RETRY_AFTER)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


def _shown(url: str, params: Mapping[str, str | int] | None) -> str:
    return str(httpx.URL(url, params=params)) if params else url
