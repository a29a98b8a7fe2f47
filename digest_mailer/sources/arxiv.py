"""arXiv: an API Atom response, the Atom listing feed, or the RSS 2.0 listing feed."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from digest_mailer.errors import SourceError
from digest_mailer.models import FetchResult, Paper
from digest_mailer.sources.common import (
    MAX_NAMES,
    canonical_id,
    clean_text,
    collect,
    parse_datetime,
    parse_rfc822,
    safe_url,
    shown,
)

logger = logging.getLogger(__name__)

ATOM = "{http://www.w3.org/2005/Atom}"
DC = "{http://purl.org/dc/elements/1.1/}"
ARXIV = "{http://arxiv.org/schemas/atom}"
# The listing feeds prefix the abstract with "arXiv:2501.01234v1 Announce Type: new Abstract:".
_LISTING_PREFIX = re.compile(r"^arXiv:\S+\s+Announce Type:\s*\S+\s+Abstract:\s*", re.I)


def parse(data: bytes, origin: str) -> FetchResult:
    try:
        root = fromstring(data, forbid_dtd=True)
    except DefusedXmlException as e:
        raise SourceError(f"{origin}: refused unsafe XML ({type(e).__name__})",
                          hint="a feed with a DOCTYPE or entities is not an arXiv feed") from e
    except ParseError as e:
        raise SourceError(f"{origin}: not valid XML ({e})",
                          hint="is [source] kind right? 'arxiv' expects Atom or RSS") from e
    read: Callable[[Element], tuple[Paper | None, str]]
    if root.tag == f"{ATOM}feed":
        entries, read = root.findall(f"{ATOM}entry"), _atom_entry
    elif root.tag == "rss":
        entries, read = root.findall("channel/item"), _rss_item
    else:
        raise SourceError(f"{origin}: not an Atom or RSS feed (root element {root.tag!r})",
                          hint="is [source] kind right?")
    return collect(entries, read, origin, "entry")


def _text(entry: Element, tag: str) -> str:
    node = entry.find(tag)
    return clean_text("".join(node.itertext())) if node is not None else ""


def _authors(entry: Element, atom_names: list[str]) -> tuple[str, ...]:
    if atom_names:
        return tuple(atom_names[:MAX_NAMES])
    creators = ", ".join(_text(c, ".") for c in entry.findall(f"{DC}creator")[:MAX_NAMES])
    return tuple(a for a in (clean_text(x, 300) for x in creators.split(",")) if a)[:MAX_NAMES]


def _atom_entry(entry: Element) -> tuple[Paper | None, str]:
    raw_id = _text(entry, f"{ATOM}id")
    pid = canonical_id(raw_id)
    if pid is None:
        return None, f"no arXiv id (id={shown(raw_id)})"
    title = _text(entry, f"{ATOM}title")
    if not title:
        return None, f"{pid}: no title"
    authors = entry.findall(f"{ATOM}author")[:MAX_NAMES]
    names = [n for n in (clean_text(_text(a, f"{ATOM}name"), 300) for a in authors) if n]
    published = parse_datetime(_text(entry, f"{ATOM}published"))
    return Paper(
        id=pid,
        title=title,
        abstract=_LISTING_PREFIX.sub("", _text(entry, f"{ATOM}summary")),
        authors=_authors(entry, names),
        published_at=published,
        listed_on=published.date() if published else None,
        project_url=None,
        github_url=_code_link(entry),
    ), ""


def _rss_item(item: Element) -> tuple[Paper | None, str]:
    link = _text(item, "link")
    pid = canonical_id(link) or canonical_id(_text(item, "guid"))
    if pid is None:
        return None, f"no arXiv id (link={shown(link)})"
    title = _text(item, "title")
    if not title:
        return None, f"{pid}: no title"
    published = parse_rfc822(_text(item, "pubDate"))
    return Paper(
        id=pid,
        title=title,
        abstract=_LISTING_PREFIX.sub("", _text(item, "description")),
        authors=_authors(item, []),
        published_at=published,
        listed_on=published.date() if published else None,
    ), ""


def _code_link(entry: Element) -> str | None:
    for link in entry.findall(f"{ATOM}link"):
        href = safe_url(link.get("href"))
        if href and "github.com/" in href:
            return href
    return None
