"""Sources: one module per kind behind one small interface; parsing is separate from fetching.

Every kind can read a local file (parse only) or a URL (fetch, then parse).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from digest_mailer.errors import SourceError
from digest_mailer.models import FetchResult
from digest_mailer.sources import arxiv, hf_api, hf_page
from digest_mailer.sources.common import merge_papers
from digest_mailer.sources.http import HttpFetcher

logger = logging.getLogger(__name__)

Parser = Callable[[bytes, str], FetchResult]
PARSERS: dict[str, Parser] = {
    "huggingface": hf_api.parse,
    "huggingface-page": hf_page.parse,
    "arxiv": arxiv.parse,
}
KINDS = tuple(PARSERS)


class Source(Protocol):
    @property
    def origin(self) -> str: ...

    def fetch(self, run_date: date) -> FetchResult: ...


@dataclass(frozen=True, slots=True)
class SourceSpec:
    kind: str | None  # None: a local file whose kind is read off its content
    location: str
    lookback_days: int = 2


def window(run_date: date, lookback_days: int) -> tuple[date, ...]:
    """The days a run pulls, oldest first, ending with the run date."""
    return tuple(run_date - timedelta(days=n) for n in reversed(range(max(lookback_days, 1))))


def is_url(location: str) -> bool:
    return "://" in location


def sniff_kind(data: bytes) -> str | None:
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head[:1] in (b"[", b"{"):
        return "huggingface"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "huggingface-page"
    if head.startswith(b"<?xml") or head.startswith((b"<feed", b"<rss")):
        return "arxiv"
    return None


@dataclass(frozen=True, slots=True)
class FileSource:
    kind: str | None
    path: Path

    @property
    def origin(self) -> str:
        return str(self.path)

    def fetch(self, run_date: date) -> FetchResult:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as e:
            raise SourceError(f"{self.path}: no such file",
                              hint="check --source or [source] location") from e
        except OSError as e:
            raise SourceError(f"{self.path}: cannot read: {e.strerror}") from e
        kind = self.kind or sniff_kind(data)
        if kind is None:
            raise SourceError(f"{self.path}: cannot tell what kind of feed this is",
                              hint=f"pass --source-kind ({' | '.join(KINDS)})")
        logger.info("reading %s as %s", self.path, kind)
        return PARSERS[kind](data, str(self.path))


@dataclass(frozen=True, slots=True)
class HttpSource:
    kind: str
    url: str
    lookback_days: int
    http: HttpFetcher

    @property
    def origin(self) -> str:
        return self.url

    def fetch(self, run_date: date) -> FetchResult:
        days = window(run_date, self.lookback_days)
        if self.kind == "huggingface" and "{date}" not in self.url:
            return hf_api.fetch(self.url, self.http, days)
        urls = [self.url.replace("{date}", d.isoformat()) for d in days] \
            if "{date}" in self.url else [self.url]
        results = [PARSERS[self.kind](self.http.get(u), u) for u in urls]
        return FetchResult(
            papers=merge_papers(p for r in results for p in r.papers),
            skipped=sum(r.skipped for r in results),
            skipped_reasons=tuple(x for r in results for x in r.skipped_reasons),
            origin=self.url,
        )


def open_source(spec: SourceSpec, http: Callable[[], HttpFetcher]) -> Source:
    """A Source for `spec`; `http` makes the HTTP client, only when a URL needs one."""
    if not is_url(spec.location):
        return FileSource(spec.kind, Path(spec.location).expanduser())
    scheme = urlsplit(spec.location).scheme.lower()
    if scheme == "file":
        return FileSource(spec.kind, Path(urlsplit(spec.location).path))
    if scheme not in ("http", "https"):
        raise SourceError(f"{spec.location}: only http and https URLs (or local files) can "
                          "be read")
    return HttpSource(spec.kind or "huggingface", spec.location, spec.lookback_days, http())
