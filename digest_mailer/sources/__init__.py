"""Sources: one module per kind behind one small interface; parsing is separate from fetching.

Every kind can read a local file (parse only) or a URL (fetch, then parse). The kinds are
registered once, in digest_mailer.constants.SOURCES.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import ModuleType
from typing import Protocol
from urllib.parse import unquote, urlsplit

from digest_mailer.constants import SOURCE_KINDS, SOURCES
from digest_mailer.errors import DigestMailerError, SourceError
from digest_mailer.models import FetchResult
from digest_mailer.sources.common import combine
from digest_mailer.sources.http import HttpFetcher

logger = logging.getLogger(__name__)

class Source(Protocol):
    @property
    def origin(self) -> str: ...

    def fetch(self, run_date: date) -> FetchResult: ...


DEFAULT_MAX_BYTES = 20_000_000


@dataclass(frozen=True, slots=True)
class SourceSpec:
    kind: str | None  # None: a local file whose kind is read off its content
    location: str
    lookback_days: int = 2
    max_bytes: int = DEFAULT_MAX_BYTES  # a local file's cap; HttpFetcher has its own


def window(run_date: date, lookback_days: int) -> tuple[date, ...]:
    """The days a run pulls, oldest first, ending with the run date."""
    return tuple(run_date - timedelta(days=n) for n in reversed(range(max(lookback_days, 1))))


def is_url(location: str) -> bool:
    return "://" in location


def sniff_kind(data: bytes) -> str | None:
    return next((k.name for k in SOURCES if k.looks_like(data)), None)


def _module(kind: str) -> ModuleType:
    found = next((k for k in SOURCES if k.name == kind), None)
    if found is None:
        raise SourceError(f"{kind!r} is not a source kind",
                          hint=f"use one of: {', '.join(SOURCE_KINDS)}")
    return importlib.import_module(f"{__name__}.{found.module}")


def parse(kind: str, data: bytes, origin: str) -> FetchResult:
    """The feed in `data` read by `kind`'s parser. Whatever the bytes, the answer is a result or
    a SourceError: under `serve` that is a failure the scheduler retries."""
    try:
        result: FetchResult = _module(kind).parse(data, origin)
    except DigestMailerError:
        raise
    except Exception as e:  # a parser bug met by hostile input still ends in one Error: line
        logger.debug("%s: the %s parser failed", origin, kind, exc_info=True)
        raise SourceError(f"{origin}: cannot read this feed as {kind} ({type(e).__name__})",
                          hint="is [source] kind right? if it is, please report this feed") from e
    return result


@dataclass(frozen=True, slots=True)
class FileSource:
    kind: str | None
    path: Path
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def origin(self) -> str:
        return str(self.path)

    def fetch(self, run_date: date) -> FetchResult:
        data = read_file(self.path, self.max_bytes)
        kind = self.kind or sniff_kind(data)
        if kind is None:
            raise SourceError(f"{self.path}: cannot tell what kind of feed this is",
                              hint=f"pass --source-kind ({' | '.join(SOURCE_KINDS)})")
        logger.info("reading %s as %s", self.path, kind)
        return parse(kind, data, str(self.path))


def read_file(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most `max_bytes`: a FIFO would block the run forever and
    /dev/zero would fill the memory, so neither is read."""
    hint = "check --source or [source] location"
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:
        raise SourceError(f"{path}: no such file", hint=hint) from e
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror}", hint=hint) from e
    except ValueError as e:  # a NUL in the path
        raise SourceError(f"{str(path)!r}: not a usable file name ({e})", hint=hint) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SourceError(f"{path}: not a regular file", hint=hint)
    with os.fdopen(fd, "rb") as f:
        too_big = SourceError(f"{path}: bigger than source.max_bytes ({max_bytes:,} bytes)",
                              hint="raise [source] max_bytes if the feed is that big")
        if info.st_size > max_bytes:
            raise too_big
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise SourceError(f"{path}: cannot read: {e.strerror}", hint=hint) from e
        if len(data) > max_bytes:
            raise too_big
        return data


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
        with self.http.whole_fetch():
            return self._fetch(run_date)

    def _fetch(self, run_date: date) -> FetchResult:
        days = window(run_date, self.lookback_days)
        module = _module(self.kind)
        if "{date}" not in self.url and hasattr(module, "fetch"):
            # An API that takes the day as a parameter and pages (the HF daily papers API).
            try:
                result: FetchResult = module.fetch(self.url, self.http, days)
            except DigestMailerError:
                raise
            except Exception as e:
                logger.debug("%s: the %s fetch failed", self.url, self.kind, exc_info=True)
                raise SourceError(f"{self.url}: cannot read this feed as {self.kind} "
                                  f"({type(e).__name__})", hint="is [source] kind right?") from e
            return result
        urls = [self.url.replace("{date}", d.isoformat()) for d in days] \
            if "{date}" in self.url else [self.url]
        return combine((parse(self.kind, self.http.get(u), u) for u in urls), self.url)


def open_source(spec: SourceSpec, http: Callable[[], HttpFetcher]) -> Source:
    """A Source for `spec`; `http` makes the HTTP client, only when a URL needs one."""
    if not is_url(spec.location):
        return FileSource(spec.kind, Path(spec.location).expanduser(), spec.max_bytes)
    try:
        parts = urlsplit(spec.location)
    except ValueError as e:
        raise SourceError(f"{spec.location}: not a valid URL ({e})",
                          hint="check --source or [source] location") from e
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"{spec.location}: only local file: URLs can be read",
                              hint="mount the share and give its local path")
        return FileSource(spec.kind, Path(unquote(parts.path)), spec.max_bytes)
    if scheme not in ("http", "https"):
        raise SourceError(f"{spec.location}: only http and https URLs (or local files) can "
                          "be read")
    return HttpSource(spec.kind or SOURCE_KINDS[0], spec.location, spec.lookback_days, http())
