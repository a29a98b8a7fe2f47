"""Names the CLI needs before anything heavy is imported (`--help` stays fast), and the one
registry of source kinds that the config, the CLI and the content sniffing all read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

CONFIG_ENV = "DIGEST_MAILER_CONFIG"
DEFAULT_CONFIG = "digest-mailer.toml"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32-le"),
         (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def _head(data: bytes) -> bytes:
    """The first bytes as lower-case ASCII-compatible text, past a byte-order mark, leading
    space and comments: UTF-16 and UTF-32 feeds (JSON and XML allow them) are sniffed too."""
    head = data[:4096]
    for bom, codec in _BOMS:
        if head.startswith(bom):
            head = head[len(bom):].decode(codec, "ignore").encode()
            break
    else:
        if b"\x00" in head[:4]:  # UTF-16 or UTF-32 without a mark: NULs beside ASCII
            codec = "utf-32" if head[:2] == b"\x00\x00" or head[2:4] == b"\x00\x00" else "utf-16"
            codec += "-be" if head[:1] == b"\x00" else "-le"
            head = head.decode(codec, "ignore").encode()
    head = head.lstrip()
    while head.startswith(b"<!--") and b"-->" in head:
        head = head[head.index(b"-->") + 3:].lstrip()
    return head.lower()


def _json(data: bytes) -> bool:
    return _head(data)[:1] in (b"[", b"{")


def _html(data: bytes) -> bool:
    head = _head(data)
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def _xml(data: bytes) -> bool:
    return _head(data).startswith((b"<?xml", b"<feed", b"<rss", b"<rdf:rdf"))


@dataclass(frozen=True, slots=True)
class SourceKind:
    """One kind of feed. `module` names digest_mailer.sources.<module>, imported only when a
    feed of this kind is read; it has `parse(data, origin)` and may have `fetch(url, http, days)`
    for an API that pages by date. `looks_like` tells a local file's kind from its first bytes."""

    name: str
    summary: str
    module: str
    looks_like: Callable[[bytes], bool]


# In sniffing order: the first kind whose `looks_like` accepts the content wins.
SOURCES: tuple[SourceKind, ...] = (
    SourceKind("huggingface", "API JSON", "hf_api", _json),
    SourceKind("huggingface-page", "HTML", "hf_page", _html),
    SourceKind("arxiv", "Atom or RSS", "arxiv", _xml),
)
SOURCE_KINDS = tuple(k.name for k in SOURCES)
SOURCE_KIND_HELP = " | ".join(f"{k.name} ({k.summary})" for k in SOURCES)

if TYPE_CHECKING:
    SourceKindName = str
else:
    # The config validates `[source] kind` against this: a new kind needs no edit there.
    SourceKindName = Literal[SOURCE_KINDS]
