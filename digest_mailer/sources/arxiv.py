"""arXiv: an API Atom response, the Atom listing feed, or the RSS listing feed (2.0, or the RSS
1.0 / RDF the listing feeds sent before 2024). Atom is read in any of its namespaces (1.0, 0.3,
none), RSS with or without one."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import partial
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
_ATOMS = (ATOM, "{http://purl.org/atom/ns#}", "")  # 1.0, 0.3, none
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
RSS1 = "{http://purl.org/rss/1.0/}"
DC = "{http://purl.org/dc/elements/1.1/}"
ARXIV = "{http://arxiv.org/schemas/atom}"
# The listing feeds prefix the abstract with "arXiv:2501.01234v1 Announce Type: new Abstract:".
_LISTING_PREFIX = re.compile(r"^arXiv:\S+\s+Announce Type:\s*\S+\s+Abstract:\s*", re.I)


# The encoding an XML declaration names, if any (it sits in the first bytes).
_DECLARED = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _utf8(data: bytes) -> bytes:
    """A UTF-8 document (declared so, or by default) with any byte that is not UTF-8 replaced by
    U+FFFD: one Latin-1 title costs a character, not the whole feed. Other encodings (a BOM or
    a declaration says which) are left to the parser."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return data
    declared = _DECLARED.match(data[:512])
    if declared and declared.group(1).lower().replace(b"_", b"-") not in (b"utf-8", b"utf8"):
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")
    return data


def parse(data: bytes, origin: str) -> FetchResult:
    try:
        root = fromstring(_utf8(data), forbid_dtd=True)
    except DefusedXmlException as e:
        raise SourceError(f"{origin}: refused unsafe XML ({type(e).__name__})",
                          hint="a feed with a DOCTYPE or entities is not an arXiv feed") from e
    except (ParseError, LookupError, ValueError) as e:  # LookupError: an unknown encoding
        raise SourceError(f"{origin}: not valid XML ({clean_text(str(e), 200)})",
                          hint="is [source] kind right? 'arxiv' expects Atom or RSS") from e
    read: Callable[[Element], tuple[Paper | None, str]]
    ns, _, local = root.tag.rpartition("}")
    ns += "}" if ns else ""
    if local == "feed" and ns in _ATOMS:
        entries, read = root.findall(f"{ns}entry"), partial(_atom_entry, ns=ns)
    elif local == "rss":
        entries, read = root.findall(f"{ns}channel/{ns}item"), partial(_rss_item, ns=ns)
    elif root.tag == f"{RDF}RDF":
        entries, read = root.findall(f"{RSS1}item"), partial(_rss_item, ns=RSS1)
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


def _atom_entry(entry: Element, ns: str = ATOM) -> tuple[Paper | None, str]:
    raw_id = _text(entry, f"{ns}id")
    pid = canonical_id(raw_id)
    if pid is None:
        return None, f"no arXiv id (id={shown(raw_id)})"
    title = _text(entry, f"{ns}title")
    if not title:
        return None, f"{pid}: no title"
    authors = entry.findall(f"{ns}author")[:MAX_NAMES]
    names = [n for n in (clean_text(_text(a, f"{ns}name"), 300) for a in authors) if n]
    # Atom 0.3 says `issued` where 1.0 says `published`.
    published = parse_datetime(_text(entry, f"{ns}published") or _text(entry, f"{ns}issued"))
    return Paper(
        id=pid,
        title=title,
        abstract=_LISTING_PREFIX.sub("", _text(entry, f"{ns}summary")),
        authors=_authors(entry, names),
        published_at=published,
        listed_on=published.date() if published else None,
        project_url=None,
        github_url=_code_link(entry, ns),
    ), ""


def _rss_item(item: Element, ns: str = "") -> tuple[Paper | None, str]:
    link = _text(item, f"{ns}link")
    pid = canonical_id(link) or canonical_id(_text(item, f"{ns}guid")) or \
        canonical_id(item.get(f"{RDF}about"))
    if pid is None:
        return None, f"no arXiv id (link={shown(link)})"
    title = _text(item, f"{ns}title")
    if not title:
        return None, f"{pid}: no title"
    # RSS 2.0 dates are RFC 822; RSS 1.0 has dc:date, ISO 8601.
    published = parse_rfc822(_text(item, f"{ns}pubDate")) or \
        parse_datetime(_text(item, f"{DC}date"))
    return Paper(
        id=pid,
        title=title,
        abstract=_LISTING_PREFIX.sub("", _text(item, f"{ns}description")),
        authors=_authors(item, []),
        published_at=published,
        listed_on=published.date() if published else None,
    ), ""


def _code_link(entry: Element, ns: str) -> str | None:
    for link in entry.findall(f"{ns}link"):
        href = safe_url(link.get("href"))
        if href and "github.com/" in href:
            return href
    return None
