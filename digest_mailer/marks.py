"""Marks: stand-ins for a subscriber's name, address and unsubscribe link while a digest
renders once for many subscribers, and filling them in for each: in the HTML each mark is
escaped the way its place (text, attribute, URL, comment or style) needs, exactly as rendering
with the value itself would have written it."""

from __future__ import annotations

import functools
import re
import secrets
import unicodedata
from dataclasses import dataclass

from digest_mailer.errors import RenderError
from digest_mailer.inline import inline_css
from digest_mailer.models import Digest
from digest_mailer.text import CONTROL

SUBJECT_CHARS = 180


def one_line(text: str, limit: int = SUBJECT_CHARS) -> str:
    text = " ".join(CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# Characters that Jinja's escaping and the HTML serialiser write as they are in every context
# (a test checks each against escaped()'s slow path): plain addresses and unsubscribe links
# (https://host/path/token) skip it. Without ':' and '/' every link took it, a parse and a
# serialisation per message in the senders.
PLAIN_PUNCTUATION = "@.+_:/?=#%~,;-"
_PLAIN = re.compile(f"[A-Za-z0-9{re.escape(PLAIN_PUNCTUATION)}]*")
# The serialiser writes attributes in double quotes; single quotes kept for other writers.
_ESCAPED = re.compile(r'<p title=(["\'])(.*)\1>(.*)</p><a href=(["\'])(.*)\4>x</a>', re.S)


@functools.lru_cache(maxsize=4096)
def escaped(value: str) -> tuple[str, str, str, str]:
    """A subscriber's value as the compiled HTML carries it, in each place a template can put
    it: (text, attribute, URI attribute, raw text such as a comment). Jinja escapes it and the
    CSS inliner (inline.py) writes it out again, each context in its own way; the same two
    steps on a small snippet give the same result, so the fast path equals rendering with the
    value."""
    if _PLAIN.fullmatch(value):
        return value, value, value, value
    import markupsafe

    e = str(markupsafe.escape(value))
    out = inline_css(f'<div><p title="{e}">{e}</p><a href="{e}">x</a></div>')
    found = _ESCAPED.search(out)
    if found is None:  # cannot happen for a value the config accepts
        raise RenderError(f"{value!r}: cannot place this value in HTML")
    _, title, text, _, href = found.groups()
    # The marks sit in double-quoted attributes; such a value is rendered per subscriber
    # (rewritten()), and this form only keeps a stray mark safe.
    title, href = title.replace('"', "&quot;"), href.replace('"', "%22")
    return text, title, href, e


_PREFIXES = ("zq", "zqx", "zqy", "zqz")  # text, attribute, URI attribute, raw
_URI_ATTRIBUTES = frozenset({"href", "src", "action", "background", "cite", "longdesc",
                             "usemap", "codebase", "data", "classid", "profile"})
_RAW = re.compile(r"<!--|-->|<(/?)(style|script)\b", re.I)
_ATTRIBUTE_NAME = re.compile(r"([\w:-]+)\s*=\s*(?:\"[^\"]*|'[^']*|[^\s\"'=<>`]*)$")


def _context(html: str, at: int) -> int:
    """Where position `at` of the HTML is: 0 text, 1 attribute, 2 URI attribute, 3 raw."""
    raw = False
    for found in _RAW.finditer(html, 0, at):
        token = found.group().lower()
        raw = token == "<!--" or (token.startswith("<") and not found.group(1)
                                 and token != "-->")
    if raw:
        return 3
    open_tag, close_tag = html.rfind("<", 0, at), html.rfind(">", 0, at)
    if open_tag <= close_tag:
        return 0
    attribute = _ATTRIBUTE_NAME.search(html, open_tag, at)
    return 2 if attribute and attribute.group(1).lower() in _URI_ATTRIBUTES else 1


@dataclass(frozen=True, slots=True)
class Marks:
    """Stand-ins for the per-subscriber values while a digest renders. They carry a random
    nonce, so nothing in a feed can forge one, and only letters and digits, so MJML, the inliner
    and escaping leave them as they are."""

    name: str
    email: str
    url: str

    @classmethod
    def new(cls) -> Marks:
        nonce = secrets.token_hex(8)
        return cls(f"zq{nonce}nm", f"zq{nonce}em", f"zq{nonce}ur")

    def all(self) -> tuple[str, str, str]:
        return (self.name, self.email, self.url)

    def every(self) -> tuple[str, ...]:
        """Each mark and its variants: in the HTML a mark says in which context it sits
        (`zqx`: an attribute, `zqy`: a URI attribute, `zqz`: a comment or style), since each
        escapes the value its own way."""
        return tuple(f"{p}{m[2:]}" for m in self.all() for p in _PREFIXES)

    def placed(self, html: str) -> str:
        """The compiled HTML with each mark replaced by the variant for where it sits."""
        pattern = re.compile("|".join(self.all()))
        out: list[str] = []
        last = 0
        for found in pattern.finditer(html):
            start = found.start()
            out.append(html[last:start] + _PREFIXES[_context(html, start)] + found.group()[2:])
            last = found.end()
        return "".join(out) + html[last:]


@dataclass(frozen=True, slots=True)
class DigestTemplate:
    subject: str
    html: str
    text: str
    marks: Marks

    def fill_html(self, text: str, name: str, email: str, url: str) -> str:
        for mark, value in zip(self.marks.all(), (name, email, url), strict=True):
            if mark[2:] in text:
                for prefix, shown in zip(_PREFIXES, escaped(value), strict=True):
                    text = text.replace(prefix + mark[2:], shown)
        return text

    def fill_text(self, text: str, name: str, email: str, url: str) -> str:
        m = self.marks
        return text.replace(m.name, name).replace(m.email, email).replace(m.url, url)

    def fill_subject(self, name: str, email: str, url: str) -> str:
        return one_line(self.fill_text(self.subject, name, email, url))


def _rewritten_char(c: str) -> bool:
    # What mjml-python writes as `\u{...}` inside an attribute (Rust's escape_debug): controls,
    # format characters (bidi marks, zero-width joiners, soft hyphen), spaces other than
    # U+0020, unassigned and private-use code points, and combining marks.
    return not c.isprintable() or unicodedata.category(c) in ("Mn", "Me", "Mc")


def rewritten(digest: Digest) -> bool:
    """Whether the subscriber's name, address or link holds a character MJML rewrites in an
    attribute: the escaping the fast path computes cannot follow it, so that email renders
    with the values themselves."""
    sub = digest.subscriber
    return any((not v.isascii() and any(map(_rewritten_char, v)))
               or ('"' in v and "'" not in v)  # its attributes change quotes (see _ESCAPED)
               for v in (sub.name, sub.email, digest.unsubscribe_url))
