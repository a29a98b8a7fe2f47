"""The Hugging Face daily papers API (`/api/daily_papers`): JSON items, both schema eras."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from digest_mailer.errors import SourceError
from digest_mailer.models import FetchResult, Paper
from digest_mailer.sources.common import (
    as_int,
    canonical_id,
    clean_text,
    collect,
    merge_papers,
    parse_date,
    parse_datetime,
    safe_url,
)
from digest_mailer.sources.http import HttpFetcher

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
MAX_COUNT = 10_000_000  # stars and comments past this are a broken feed, not a real count
MAX_PAGES = 50  # a day has tens of papers; this only stops a server that ignores `p`


def parse(data: bytes, origin: str) -> FetchResult:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{origin}: not valid JSON ({e})",
                          hint="is [source] kind right? 'huggingface' expects the API's "
                               "JSON") from e
    return parse_items(_items_of(doc, origin), origin)


def _items_of(doc: Any, origin: str) -> list[Any]:
    if isinstance(doc, list):
        return doc
    # The papers page embeds the same items as {"dailyPapers": [...]}.
    if isinstance(doc, dict) and isinstance(doc.get("dailyPapers"), list):
        return doc["dailyPapers"]
    raise SourceError(f"{origin}: expected a JSON array of daily papers, got "
                      f"{type(doc).__name__}", hint="is [source] kind right?")


def parse_items(items: Iterable[Any], origin: str) -> FetchResult:
    return collect(items, paper_from_item, origin, "item")


def paper_from_item(item: Any) -> tuple[Paper | None, str]:
    if not isinstance(item, dict):
        return None, f"not an object ({type(item).__name__})"
    inner = item.get("paper")
    paper: dict[str, Any] = inner if isinstance(inner, dict) else item
    pid = canonical_id(paper.get("id"))
    if pid is None:
        return None, f"no arXiv id (id={paper.get('id')!r:.60})"
    title = clean_text(paper.get("title")) or clean_text(item.get("title"))
    if not title:
        return None, f"{pid}: no title"
    org = item.get("organization") or paper.get("organization")
    org_name = clean_text(org.get("fullname") or org.get("name")) if isinstance(org, dict) else ""
    keywords = paper.get("ai_keywords")
    listed = (parse_date(paper.get("submittedOnDailyAt")) or parse_date(item.get("publishedAt")))
    return Paper(
        id=pid,
        title=title,
        abstract=clean_text(paper.get("summary")) or clean_text(item.get("summary")),
        authors=_authors(paper.get("authors")),
        published_at=parse_datetime(paper.get("publishedAt")),
        listed_on=listed,
        upvotes=as_int(paper.get("upvotes")),
        organization=org_name or None,
        github_url=safe_url(paper.get("githubRepo")),
        project_url=safe_url(paper.get("projectPage")),
        ai_summary=clean_text(paper.get("ai_summary")) or None,
        ai_keywords=tuple(k for k in (clean_text(k) for k in keywords) if k)
        if isinstance(keywords, list) else (),
        num_comments=min(as_int(item.get("numComments")), MAX_COUNT),
        github_stars=min(as_int(paper.get("githubStars") or item.get("githubStars")), MAX_COUNT),
    ), ""


def _authors(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        return ()
    names = []
    for a in raw:
        if isinstance(a, dict) and not a.get("hidden"):
            name = clean_text(a.get("name"))
        else:
            name = clean_text(a) if isinstance(a, str) else ""
        if name:
            names.append(name)
    return tuple(names)


def fetch(location: str, http: HttpFetcher, days: Sequence[date]) -> FetchResult:
    """One request per day (`?date=`), paginated with `p`/`limit` until an empty page."""
    papers: list[Paper] = []
    reasons: list[str] = []
    for day in days:
        seen: set[str] = set()
        for page in range(MAX_PAGES):
            params: dict[str, str | int] = {"date": day.isoformat(), "p": page,
                                            "limit": PAGE_SIZE}
            origin = f"{location} (date={day}, p={page})"
            body = http.get(location, params=params)
            try:
                items = _items_of(json.loads(body), origin)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SourceError(f"{origin}: not valid JSON ({e})",
                                  hint="is the location the daily papers API?") from e
            if not items:
                break
            result = parse_items(items, origin)
            new = [p for p in result.papers if p.id not in seen]
            papers.extend(result.papers)
            reasons.extend(result.skipped_reasons)
            if not new and result.papers:
                logger.warning("%s: the server repeats the previous page; stopping", origin)
                break
            seen.update(p.id for p in result.papers)
    return FetchResult(papers=merge_papers(papers), skipped=len(reasons),
                       skipped_reasons=tuple(reasons), origin=location)
