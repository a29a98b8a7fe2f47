"""What every parser shares: canonical ids, clean text, safe links, dates, deduplication."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import TypeVar
from urllib.parse import urlsplit

from digest_mailer.models import FetchResult, Paper

logger = logging.getLogger(__name__)
T = TypeVar("T")

# New-style ids (2501.01234, 0704.0001) and old-style ones (hep-th/9901001, math.AG/0601001).
_NEW_ID = re.compile(r"(?<![\d.])(\d{4}\.\d{4,5})(?:v\d+)?(?![\d])")
_OLD_ID = re.compile(r"(?<![\w-])([a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?(?!\d)")
# Characters RFC 3986 never allows unescaped: a link holding one is malformed or an attack.
_NOT_IN_URL = re.compile(r'[\s"<>\\^`{|}]')
# Also lone surrogates and noncharacters (they failed the whole run's rendering) and direction
# overrides and isolates (they let feed text display reversed).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u2028\u2029\ud800-\udfff\ufdd0-\ufdef"
                      r"\ufffe\uffff\u202a-\u202e\u2066-\u2069]")


def canonical_id(raw: object) -> str | None:
    """The arXiv id without its version, from an id, an abs/pdf URL or an OAI identifier."""
    if not isinstance(raw, str | int | float):
        return None
    text = str(raw).strip()
    m = _NEW_ID.search(text) or _OLD_ID.search(text)
    return m.group(1) if m else None


def clean_text(raw: object) -> str:
    """Whitespace folded to single spaces, control characters gone; '' for non-strings."""
    if not isinstance(raw, str):
        return ""
    return " ".join(_CONTROL.sub(" ", raw).split())


def safe_url(raw: object) -> str | None:
    """An http(s) URL or None: feed links must never become javascript: or data: links."""
    text = clean_text(raw)
    if not text or _NOT_IN_URL.search(text):
        return None
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return text


def parse_datetime(raw: object) -> datetime | None:
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip().replace("Z", "+00:00")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_date(raw: object) -> date | None:
    if isinstance(raw, str) and len(raw) >= 10:
        try:
            return date.fromisoformat(raw[:10])
        except ValueError:
            return None
    return None


def as_int(raw: object) -> int:
    if isinstance(raw, bool):
        return 0
    if isinstance(raw, int):
        return max(raw, 0)
    if isinstance(raw, float) and raw == raw:
        return max(int(raw), 0)
    return 0


Reader = Callable[[T], tuple[Paper | None, str]]


def collect(entries: Iterable[T], read: Reader[T], origin: str, noun: str) -> FetchResult:
    """Every entry read into a Paper, or skipped with the reason; never a crash per entry."""
    papers: list[Paper] = []
    reasons: list[str] = []
    for n, entry in enumerate(entries):
        paper, why = read(entry)
        if paper is None:
            reasons.append(f"{origin} {noun} {n}: {why}")
            logger.info("skipped %s", reasons[-1])
        else:
            papers.append(paper)
    return FetchResult(papers=merge_papers(papers), skipped=len(reasons),
                       skipped_reasons=tuple(reasons), origin=origin)


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
