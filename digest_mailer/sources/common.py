"""What every parser shares: canonical ids, clean text, safe links, dates, bounded numbers,
item-by-item reading, deduplication. Every value here comes from an untrusted feed: each helper
returns something in bounds or nothing, never raises."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urlsplit

from digest_mailer.models import FetchResult, Paper
from digest_mailer.text import CONTROL, NONCHAR, SURROGATE

logger = logging.getLogger(__name__)
T = TypeVar("T")

# New-style ids (2501.01234, 0704.0001) and old-style ones (hep-th/9901001, math.AG/0601001):
# year, month 01-12, number. Since 2015 (1501) the number has five digits, before it four.
_MONTH = r"(?:0[1-9]|1[0-2])"
_NEW_ID = re.compile(rf"(?<![\d.])(\d\d{_MONTH})\.(\d{{4,5}})(?:v\d+)?(?![\d])")
_OLD_ID = re.compile(
    rf"(?<![\w-])([a-z]+(?:-[a-z]+)*(?:\.[A-Z]{{2}})?/\d\d{_MONTH}\d{{3}})(?:v\d+)?(?!\d)")
# Characters RFC 3986 never allows unescaped: a link holding one is malformed or an attack.
_NOT_IN_URL = re.compile(r'[\s"<>\\^`{|}]')
# Counts (upvotes, comments, stars) are clamped to what a 32-bit column, a template and a sort
# can take: Infinity, 1e999 and 10**5000 all become MAX_COUNT.
MAX_COUNT = 2**31 - 1
# Longer than any real field; a feed that sends more gets it cut with an ellipsis, so one item
# cannot blow up an email (arXiv caps abstracts at 1,920 characters).
MAX_TEXT = 20_000
MAX_NAMES = 5_000  # authors of one paper (particle physics papers reach about 3,000)
MAX_KEYWORDS = 100
MAX_URL = 2_048
# Dates outside these years are typos or attacks; inside them every timezone conversion works.
MIN_YEAR, MAX_YEAR = 1900, 2200
# Reasons kept per feed; the count of skipped items stays exact.
MAX_REASONS = 100


def canonical_id(raw: object) -> str | None:
    """The arXiv id without its version, from an id, an abs/pdf URL or an OAI identifier. Only
    text: a number is no id (the float 2506.10010 reads as 2506.1001, another paper)."""
    if not isinstance(raw, str):
        return None
    text = raw.strip()[:MAX_URL]
    for m in _NEW_ID.finditer(text):
        yymm, number = m.groups()
        if (len(number) == 5) == (yymm >= "1501"):
            return f"{yymm}.{number}"
    old = _OLD_ID.search(text)
    return old.group(1) if old else None


def clean_text(raw: object, limit: int = MAX_TEXT) -> str:
    """Whitespace folded to single spaces, control characters gone, lone surrogates replaced,
    at most `limit` characters; '' for non-strings."""
    if not isinstance(raw, str):
        return ""
    # Cut before the regexes run: a 20 MB title costs no more than a 20 KB one.
    text = raw[: limit * 2] if len(raw) > limit * 2 else raw
    text = " ".join(CONTROL.sub(" ", NONCHAR.sub("", SURROGATE.sub("\ufffd", text))).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def shown(raw: object) -> str:
    """A short, safe rendering of a bad value for a skip reason (never the repr of a big tree)."""
    if isinstance(raw, str):
        text = repr(raw[:60])
    elif isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) >= 10**20:
        return "a huge number"
    elif isinstance(raw, int | float) or raw is None:
        text = repr(raw)
    else:
        return f"a {type(raw).__name__}"
    return text if len(text) <= 60 else text[:59] + "…"


def safe_url(raw: object) -> str | None:
    """An http(s) URL or None: feed links must never become javascript: or data: links."""
    text = clean_text(raw, MAX_URL + 1)
    if not text or len(text) > MAX_URL or _NOT_IN_URL.search(text):
        return None
    try:
        parts = urlsplit(text)
    except ValueError:  # "http://[::1" and friends
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return text


def _in_range(value: datetime) -> datetime | None:
    return value if MIN_YEAR <= value.year <= MAX_YEAR else None


def parse_datetime(raw: object) -> datetime | None:
    """An ISO 8601 time, timezone-aware (UTC when none is given), or None."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
        return None
    text = raw.strip().replace("Z", "+00:00")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return _in_range(value if value.tzinfo else value.replace(tzinfo=UTC))


def parse_rfc822(raw: object) -> datetime | None:
    """An RSS pubDate ("Mon, 02 Jun 2025 00:00:00 -0400"), or None."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
        return None
    try:
        value = parsedate_to_datetime(raw)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return _in_range(value if value.tzinfo else value.replace(tzinfo=UTC))


def parse_date(raw: object) -> date | None:
    if isinstance(raw, str) and len(raw) >= 10:
        try:
            value = date.fromisoformat(raw[:10])
        except ValueError:
            return None
        return value if MIN_YEAR <= value.year <= MAX_YEAR else None
    return None


def as_int(raw: object) -> int:
    """A count in 0..MAX_COUNT: negative, NaN and non-numbers are 0, anything bigger (Infinity,
    1e999, 2**63) is MAX_COUNT."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return 0
    if isinstance(raw, float):
        if math.isnan(raw):
            return 0
        if math.isinf(raw):
            return MAX_COUNT if raw > 0 else 0
    return int(min(max(raw, 0), MAX_COUNT))


def count_text(raw: str) -> int:
    """A count written in a page ("94"): ASCII digits only ("²".isdigit() is true too)."""
    text = raw.strip()
    if not text or not text.isascii() or not text.isdigit():
        return 0
    return MAX_COUNT if len(text) > 10 else min(int(text), MAX_COUNT)


Reader = Callable[[T], tuple[Paper | None, str]]


def collect(entries: Iterable[T], read: Reader[T], origin: str, noun: str) -> FetchResult:
    """Every entry read into a Paper, or skipped with the reason; never a crash per entry."""
    papers: list[Paper] = []
    reasons: list[str] = []
    skipped = 0
    for n, entry in enumerate(entries):
        try:
            paper, why = read(entry)
        except Exception as e:  # one unreadable item must not lose the whole feed
            logger.debug("%s %s %d: unreadable", origin, noun, n, exc_info=True)
            paper, why = None, f"unreadable ({type(e).__name__}: {clean_text(str(e), 80)})"
        if paper is None:
            skipped += 1
            if len(reasons) < MAX_REASONS:
                reasons.append(f"{origin} {noun} {n}: {why}")
                logger.info("skipped %s", reasons[-1])
        else:
            papers.append(paper)
    return FetchResult(papers=merge_papers(papers), skipped=skipped,
                       skipped_reasons=tuple(reasons), origin=origin)


def combine(results: Iterable[FetchResult], origin: str) -> FetchResult:
    """Several pages or days of one feed as one result."""
    parts = list(results)
    return FetchResult(
        papers=merge_papers(p for r in parts for p in r.papers),
        skipped=sum(r.skipped for r in parts),
        skipped_reasons=tuple(x for r in parts for x in r.skipped_reasons)[:MAX_REASONS],
        origin=origin,
    )


def merge_papers(papers: Iterable[Paper]) -> tuple[Paper, ...]:
    """One paper per id: the same paper listed on two days keeps its first listing day and the
    freshest numbers (upvotes only grow)."""
    merged: dict[str, Paper] = {}
    for paper in papers:
        old = merged.get(paper.id)
        if old is None:
            merged[paper.id] = paper
            continue
        newer, other = (paper, old) if paper.upvotes >= old.upvotes else (old, paper)
        days = [d for d in (old.listed_on, paper.listed_on) if d]
        merged[paper.id] = replace(
            newer,
            listed_on=min(days) if days else None,
            ai_summary=newer.ai_summary or other.ai_summary,
            ai_keywords=newer.ai_keywords or other.ai_keywords,
            organization=newer.organization or other.organization,
            github_url=newer.github_url or other.github_url,
            project_url=newer.project_url or other.project_url,
            abstract=newer.abstract or other.abstract,
            authors=newer.authors or other.authors,
        )
    return tuple(merged.values())
