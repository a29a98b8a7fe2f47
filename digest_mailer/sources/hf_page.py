"""The Hugging Face papers page (HTML): the embedded `data-props` JSON, else the article cards.

Parsed by lxml's HTML parser into its C tree: a 19 MB page of 160,000 cards takes about 4 s and
400 MB (BeautifulSoup's Python tree took 36 s and 846 MB). Entities are never expanded."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date

import lxml.html
from lxml import etree

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

_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32"),
         (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
_HOLDERS = etree.XPath('//*[@data-target="DailyPapers"][@data-props]')
_ARTICLES = etree.XPath("//article")
# The vote count sits beside the (disabled) upvote checkbox.
_VOTES = etree.XPath('.//input[@type="checkbox"]/following-sibling::div'
                     '[contains(concat(" ", normalize-space(@class), " "), " leading-none ")]')


def _document(data: bytes, origin: str) -> tuple[lxml.html.HtmlElement | None, str]:
    """The page's tree (None when it holds no markup) and a note when the parser stopped early.
    Bytes are read as UTF-8 (invalid sequences replaced) unless a byte-order mark says else."""
    codec = next((c for bom, c in _BOMS if data.startswith(bom)), None)
    if codec is not None and codec != "utf-8":
        data = data.decode(codec, "replace").encode()
    parser = lxml.html.HTMLParser(encoding="utf-8", no_network=True, remove_comments=True,
                                  remove_pis=True)
    try:
        root = lxml.html.document_fromstring(data, parser=parser)
    except etree.ParserError:  # "Document is empty"
        return None, ""
    # libxml2 stops at tags nested 256 deep: what follows them is not read. Only a page built
    # to hide its own items nests that deep.
    limit = next((e.message for e in parser.error_log if e.type_name == "ERR_RESOURCE_LIMIT"), "")
    if limit:
        logger.warning("%s: %s; the rest of the page is not read", origin, limit)
    return root, "the page nests tags too deep to be read past that" if limit else ""


def parse(data: bytes, origin: str) -> FetchResult:
    root, stopped = _document(data, origin)
    broken = ""
    # The first holder that has the papers: a page may carry more than one.
    for holder in _HOLDERS(root) if root is not None else ():
        try:
            props, cut = loads(str(holder.get("data-props")), origin, hint="")
        except SourceError as e:
            broken = broken or e.message.removeprefix(f"{origin}: ")
            logger.warning("%s: data-props is not JSON (%s)", origin, e.message)
            continue
        items = props.get("dailyPapers") if isinstance(props, dict) else None
        if isinstance(items, list):
            return _with_listing_day(hf_api.parse_items(items, origin, cut=cut),
                                     parse_date(props.get("date")))
    articles = _ARTICLES(root) if root is not None else []
    if not articles:
        why = (f"its DailyPapers data-props is {broken}" if broken
               else "no DailyPapers data-props")
        raise SourceError(f"{origin}: no daily papers found in this HTML ({why}, no <article> "
                          f"cards{'; ' + stopped if stopped else ''})",
                          hint="is it the Hugging Face papers page? for the API use kind = "
                               "'huggingface'")
    return collect(articles, _card, origin, "card")


def _card(card: lxml.html.HtmlElement) -> tuple[Paper | None, str]:
    heading = next(card.iter("h3", "h2"), None)
    link = next((a for a in heading.iter("a") if a.get("href") is not None), None) \
        if heading is not None else None
    pid = canonical_id(link.get("href")) if link is not None else None
    if pid is None or link is None:
        return None, "no paper link"
    title = clean_text(" ".join(link.itertext()))
    if not title:
        return None, f"{pid}: no title"
    votes = _VOTES(card)
    count = count_text("".join(s.strip() for s in votes[0].itertext())) if votes else 0
    # The comment count is the text of the link to the paper's discussion.
    talk = next((a for a in card.iter("a") if (a.get("href") or "").endswith("#community")), None)
    said = count_text("".join(s.strip() for s in talk.itertext())) if talk is not None else 0
    return Paper(id=pid, title=title, upvotes=count, num_comments=said), ""


def _with_listing_day(result: FetchResult, day: date | None) -> FetchResult:
    if day is None:
        return result
    papers = tuple(p if p.listed_on else replace(p, listed_on=day) for p in result.papers)
    return replace(result, papers=papers)
