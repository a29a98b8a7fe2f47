"""The Hugging Face papers page (HTML): the embedded `data-props` JSON, else the article cards."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from datetime import date

from bs4 import BeautifulSoup, Tag, XMLParsedAsHTMLWarning

from digest_mailer.errors import SourceError
from digest_mailer.models import FetchResult, Paper
from digest_mailer.sources import hf_api
from digest_mailer.sources.common import (
    canonical_id,
    clean_text,
    collect,
    count_text,
    parse_date,
)
from digest_mailer.sources.jsondoc import loads

logger = logging.getLogger(__name__)


def parse(data: bytes, origin: str) -> FetchResult:
    with warnings.catch_warnings():
        # Feeding it XML (a wrong kind) ends in the clear "no daily papers found" below.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(data, "lxml")
    broken = ""
    # The first holder that has the papers: a page may carry more than one.
    for holder in soup.select('[data-target="DailyPapers"][data-props]'):
        try:
            props, cut = loads(str(holder["data-props"]), origin, hint="")
        except SourceError as e:
            broken = broken or e.message.removeprefix(f"{origin}: ")
            logger.warning("%s: data-props is not JSON (%s)", origin, e.message)
            continue
        items = props.get("dailyPapers") if isinstance(props, dict) else None
        if isinstance(items, list):
            return _with_listing_day(hf_api.parse_items(items, origin, cut=cut),
                                     parse_date(props.get("date")))
    articles = soup.find_all("article")
    if not articles:
        why = (f"its DailyPapers data-props is {broken}" if broken
               else "no DailyPapers data-props")
        raise SourceError(f"{origin}: no daily papers found in this HTML ({why}, no <article> "
                          "cards)",
                          hint="is it the Hugging Face papers page? for the API use kind = "
                               "'huggingface'")
    return collect(articles, _card, origin, "card")


def _card(card: Tag) -> tuple[Paper | None, str]:
    heading = card.find(["h3", "h2"])
    link = heading.find("a", href=True) if isinstance(heading, Tag) else None
    pid = canonical_id(link["href"]) if isinstance(link, Tag) else None
    if pid is None or not isinstance(link, Tag):
        return None, "no paper link"
    title = clean_text(link.get_text(" "))
    if not title:
        return None, f"{pid}: no title"
    # The vote count sits beside the (disabled) upvote checkbox.
    votes = card.select_one("input[type=checkbox] ~ div.leading-none")
    return Paper(id=pid, title=title,
                 upvotes=count_text(votes.get_text(strip=True)) if votes else 0), ""


def _with_listing_day(result: FetchResult, day: date | None) -> FetchResult:
    if day is None:
        return result
    papers = tuple(p if p.listed_on else replace(p, listed_on=day) for p in result.papers)
    return replace(result, papers=papers)

