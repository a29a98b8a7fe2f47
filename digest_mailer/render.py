"""Digest -> RenderedDigest: Jinja2 (autoescape on) into MJML, mjml-python, premailer, and a
plain-text part from its own template with the same content."""

from __future__ import annotations

import functools
import logging
import re
import secrets
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from digest_mailer.errors import RenderError
from digest_mailer.models import Digest, Match, ReasonKind, RenderedDigest, Subscriber

logger = logging.getLogger(__name__)

HTML_TEMPLATE = "digest.mjml.j2"
TEXT_TEMPLATE = "digest.txt.j2"
SUBJECT_TEMPLATE = "subject.txt.j2"
MAX_AUTHORS = 3
BLURB_CHARS = 320
SUBJECT_CHARS = 180
SUBJECT_TOPICS = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def shipped_templates() -> Path:
    """The templates installed inside the package; in a source checkout, the repo's templates/."""
    here = Path(__file__).resolve().parent
    installed = here / "templates"
    return installed if installed.is_dir() else here.parent / "templates"


def escape_value(value: str) -> str:
    """A subscriber's value for the compiled HTML: safe in a text node and in a
    double-quoted attribute alike."""
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


@dataclass(frozen=True, slots=True)
class Marks:
    """Stand-ins for the per-subscriber values while a digest renders. They carry a random
    nonce, so nothing in a feed can forge one, and only letters and digits, so MJML, premailer
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


@dataclass(frozen=True, slots=True)
class DigestTemplate:
    subject: str
    html: str
    text: str
    marks: Marks

    def fill_html(self, text: str, name: str, email: str, url: str) -> str:
        m = self.marks
        return (text.replace(m.name, escape_value(name)).replace(m.email, escape_value(email))
                .replace(m.url, escape_value(url)))

    def fill_text(self, text: str, name: str, email: str, url: str) -> str:
        m = self.marks
        return text.replace(m.name, name).replace(m.email, email).replace(m.url, url)

    def fill_subject(self, name: str, email: str, url: str) -> str:
        return one_line(self.fill_text(self.subject, name, email, url))

    def fill(self, name: str, email: str, url: str) -> RenderedDigest:
        return RenderedDigest(subject=self.fill_subject(name, email, url),
                              html=self.fill_html(self.html, name, email, url),
                              text=self.fill_text(self.text, name, email, url))


@dataclass(frozen=True, slots=True)
class PaperView:
    """One paper as the templates show it: presentation decided here, not in the templates."""

    title: str
    url: str
    byline: str
    blurb: str
    links: tuple[tuple[str, str], ...]
    why: str


def byline(match: Match) -> str:
    p = match.paper
    authors = list(p.authors[:MAX_AUTHORS])
    parts = []
    if authors:
        parts.append(", ".join(authors) + (" et al." if len(p.authors) > MAX_AUTHORS else ""))
    if p.organization:
        parts.append(p.organization)
    parts.append(f"▲\u00a0{p.upvotes}\u00a0upvote{'s' if p.upvotes != 1 else ''}")
    return " · ".join(parts)


def blurb(match: Match, limit: int = BLURB_CHARS) -> str:
    """The one-line AI summary when there is one, else the abstract cut at a word boundary."""
    p = match.paper
    text = p.ai_summary or p.abstract
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:.-") + "…"


def paper_view(match: Match) -> PaperView:
    p = match.paper
    links = [("Hugging Face", p.hf_url), ("arXiv", p.arxiv_url), ("PDF", p.pdf_url)]
    if p.github_url:
        links.append(("Code", p.github_url))
    if p.project_url and p.project_url != p.github_url:
        links.append(("Project page", p.project_url))
    # A subscriber who takes every paper needs no reason per paper.
    why = "" if all(r.kind is ReasonKind.EVERYTHING for r in match.reasons) else match.why
    return PaperView(title=p.title, url=p.hf_url, byline=byline(match), blurb=blurb(match),
                     links=tuple(links), why=why)


def following(sub: Subscriber) -> str:
    parts = []
    if sub.topics:
        parts.append("the topics " + ", ".join(sub.topics))
    if sub.authors:
        parts.append("the authors " + ", ".join(sub.authors))
    return " and ".join(parts) if parts else "all papers"


def top_terms(matches: Sequence[Match], kind: ReasonKind) -> list[str]:
    """The matched topics (or authors), the most frequent first."""
    counts = Counter(r.term for m in matches for r in m.reasons if r.kind is kind)
    return [t for t, _ in counts.most_common()]


def _wrap(text: str, width: int = 72, indent: str = "   ") -> str:
    # Long unbreakable words (URLs) stay whole; a text part never needs lines past 998 octets
    # because quoted-printable encoding folds them.
    lines = textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False)
    return ("\n" + indent).join(lines)


def one_line(text: str, limit: int = SUBJECT_CHARS) -> str:
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class Renderer:
    """The Jinja2 environments and the compile steps. One per run; holds no per-email state."""

    def __init__(self, templates_dir: Path | None = None, subject_template: str | None = None
                 ) -> None:
        dirs = [str(d) for d in (templates_dir, shipped_templates()) if d is not None]
        if templates_dir is not None and not templates_dir.is_dir():
            raise RenderError(f"{templates_dir}: templates_dir is not a folder",
                              hint="fix newsletter.templates_dir or remove it")
        loader = jinja2.FileSystemLoader(dirs)
        common: dict[str, Any] = {"loader": loader, "undefined": jinja2.StrictUndefined,
                                  "keep_trailing_newline": True}
        self._html = jinja2.Environment(autoescape=True, **common)
        self._text = jinja2.Environment(autoescape=False, **common)
        self._text.filters["wrap"] = _wrap
        try:
            self._html_t = self._html.get_template(HTML_TEMPLATE)
            self._text_t = self._text.get_template(TEXT_TEMPLATE)
            self._subject_t = (self._text.from_string(subject_template) if subject_template
                               else self._text.get_template(SUBJECT_TEMPLATE))
        except jinja2.TemplateSyntaxError as e:
            raise RenderError(f"{e.filename or 'newsletter.subject'}:{e.lineno}: template "
                              f"syntax error: {e.message}") from e
        except jinja2.TemplateNotFound as e:
            raise RenderError(f"template {e.name!r} not found in {', '.join(dirs)}",
                              hint="reinstall digest-mailer or fix newsletter.templates_dir") from e

    def context(self, digest: Digest, marks: Marks) -> dict[str, Any]:
        sub = digest.subscriber
        terms = top_terms(digest.matches, ReasonKind.TOPIC)
        count = len(digest.matches)
        return {
            "newsletter": digest.newsletter,
            "date": digest.run_date.isoformat(),
            "date_long": f"{digest.run_date:%A}, {digest.run_date.day} {digest.run_date:%B %Y}",
            "name": marks.name if sub.name else "",
            "email": marks.email,
            "count": count,
            "over_cap": digest.over_cap,
            "papers": [paper_view(m) for m in digest.matches],
            "topics": terms[:SUBJECT_TOPICS],
            "more_topics": max(len(terms) - SUBJECT_TOPICS, 0),
            "authors": top_terms(digest.matches, ReasonKind.AUTHOR)[:SUBJECT_TOPICS],
            "following": following(sub),
            "unsubscribe_url": marks.url,
            "preview": one_line(f"{count} new: " + "; ".join(m.paper.title for m in
                                                            digest.matches[:3]), 150),
        }

    def render_template(self, digest: Digest, marks: Marks | None = None) -> DigestTemplate:
        """The email for everyone who shares this digest's papers, reasons and filters, with
        marks where each subscriber's name, address and unsubscribe link go."""
        marks = marks or Marks.new()
        ctx = self.context(digest, marks)
        try:
            mjml_source = self._html_t.render(ctx)
            text = self._text_t.render(ctx)
            subject = self._subject_t.render(ctx)
        except jinja2.TemplateError as e:
            raise RenderError(f"rendering the digest failed: {e}",
                              hint="check the templates in newsletter.templates_dir") from e
        return DigestTemplate(subject=subject, html=compile_mjml(mjml_source), text=text,
                              marks=marks)

    def render(self, digest: Digest) -> RenderedDigest:
        """One subscriber's email, the simple way: rendered and filled for them alone."""
        sub = digest.subscriber
        return self.render_template(digest).fill(sub.name, sub.email, digest.unsubscribe_url)


def template_key(digest: Digest) -> tuple[object, ...]:
    """Digests with equal keys render to the same template: everything the templates show
    except the name, the address and the unsubscribe link."""
    sub = digest.subscriber
    return (digest.newsletter, digest.run_date, digest.over_cap, bool(sub.name),
            following(sub), tuple((m.paper.id, m.why) for m in digest.matches))


_PREMAILER = {"allow_network": False, "remove_classes": False, "strip_important": False,
              "cssutils_logging_level": logging.CRITICAL, "disable_validation": True}


@functools.lru_cache(maxsize=64)
def _style_rules(css_body: str, index: int) -> tuple[list[Any], list[Any]]:
    """premailer's reading of one <style> block. Every digest carries the same blocks, and
    premailer re-serialises each property of them for every document (40% of its time);
    the result only depends on the block, and premailer only reads it."""
    from premailer import Premailer

    return Premailer("", **_PREMAILER)._parse_style_rules(css_body, index)  # type: ignore


def compile_mjml(source: str) -> str:
    """MJML -> HTML with the CSS inlined; nothing is fetched from the network."""
    from mjml import mjml2html  # heavy imports stay out of `--help`
    from premailer import Premailer

    class Inliner(Premailer):  # type: ignore[misc]
        def _parse_style_rules(self, css_body: str, ruleset_index: int) -> Any:
            return _style_rules(css_body, ruleset_index)

    try:
        html = mjml2html(source, disable_comments=True, fonts={})
    except Exception as e:  # mjml-python raises a bare exception type of its own
        raise RenderError(f"MJML compile failed: {e}", hint="check digest.mjml.j2") from e
    out = break_lines(Inliner(html, **_PREMAILER).transform(pretty_print=False))
    # lxml drops the doctype; without it clients render in quirks mode.
    return out if out.lstrip()[:9].lower() == "<!doctype" else "<!doctype html>\n" + out


_TAG = re.compile(r"<[A-Za-z][^<>]*>")
_ATTRIBUTE_GAP = re.compile(r"\s+(?=[\w:-]+=[\"'])")


def break_lines(html: str) -> str:
    """Short source lines without changing what renders: a line break between two attributes of
    a tag is the same whitespace as a space. It keeps lines far below 998 octets, and lets a
    subscriber's value change one short line of the encoded message, not a 70 KB one."""
    return _TAG.sub(lambda m: _ATTRIBUTE_GAP.sub("\n", m.group(0)), html)
