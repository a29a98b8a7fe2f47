"""The Hugging Face daily papers API (`/api/daily_papers`): JSON items, both schema eras."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from digest_mailer.errors import SourceError
from digest_mailer.models import FetchResult, Paper
from digest_mailer.sources.common import (
    MAX_KEYWORDS,
    MAX_NAMES,
    as_int,
    canonical_id,
    clean_text,
    collect,
    combine,
    parse_date,
    parse_datetime,
    safe_url,
    shown,
)
from digest_mailer.sources.http import HttpFetcher
from digest_mailer.sources.jsondoc import MAX_DEPTH, holds_too_deep, loads

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
MAX_PAGES = 50  # a day has tens of papers; this only stops a server that ignores `p`


def parse(data: bytes, origin: str) -> FetchResult:
    doc, cut = loads(data, origin, hint="is [source] kind right? 'huggingface' expects the "
                                        "API's JSON")
    return parse_items(_items_of(doc, origin), origin, cut=cut)


def _items_of(doc: Any, origin: str) -> list[Any]:
    if isinstance(doc, list):
        return doc
    # The papers page embeds the same items as {"dailyPapers": [...]}.
    items = doc.get("dailyPapers") if isinstance(doc, dict) else None
    if isinstance(items, list):
        return items
    raise SourceError(f"{origin}: expected a JSON array of daily papers, got "
                      f"{type(doc).__name__}", hint="is [source] kind right?")


def parse_items(items: Iterable[Any], origin: str, *, cut: bool = False) -> FetchResult:
    """`cut`: the decoder replaced parts nested too deep; the items holding them are skipped."""
    return collect(items, _checked if cut else paper_from_item, origin, "item")


def _checked(item: Any) -> tuple[Paper | None, str]:
    if holds_too_deep(item):
        return None, f"nested more than {MAX_DEPTH} levels deep"
    return paper_from_item(item)


def paper_from_item(item: Any) -> tuple[Paper | None, str]:
    if not isinstance(item, dict):
        return None, f"not an object ({shown(item)})"
    inner = item.get("paper")
    if inner is not None and not isinstance(inner, dict):
        return None, f"'paper' is a {type(inner).__name__}, not an object"
    paper: dict[str, Any] = inner if isinstance(inner, dict) else item
    pid = canonical_id(paper.get("id"))
    if pid is None:
        return None, f"no arXiv id (id={shown(paper.get('id'))})"
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
        ai_keywords=tuple(k for k in (clean_text(k, 200) for k in keywords[:MAX_KEYWORDS]) if k)
        if isinstance(keywords, list) else (),
        num_comments=as_int(item.get("numComments")),
        github_stars=as_int(paper.get("githubStars") or item.get("githubStars")),
    ), ""


def _authors(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        return ()
    names = []
    for a in raw[:MAX_NAMES]:
        if isinstance(a, dict) and not a.get("hidden"):
            name = clean_text(a.get("name"), 300)
        else:
            name = clean_text(a, 300) if isinstance(a, str) else ""
        if name:
            names.append(name)
    return tuple(names)


def fetch(location: str, http: HttpFetcher, days: Sequence[date]) -> FetchResult:
    """One request per day (`?date=`), paginated with `p`/`limit` until an empty page."""
    results: list[FetchResult] = []
    for day in days:
        seen: set[str] = set()
        for page in range(MAX_PAGES):
            params: dict[str, str | int] = {"date": day.isoformat(), "p": page,
                                            "limit": PAGE_SIZE}
            origin = f"{location} (date={day}, p={page})"
            doc, cut = loads(http.get(location, params=params), origin,
                             hint="is the location the daily papers API?")
            items = _items_of(doc, origin)
            if not items:
                break
            result = parse_items(items, origin, cut=cut)
            new = [p for p in result.papers if p.id not in seen]
            results.append(result)
            if not new and result.papers:
                logger.warning("%s: the server repeats the previous page; stopping", origin)
                break
            seen.update(p.id for p in result.papers)
    return combine(results, location)
