"""Digest -> RenderedDigest: Jinja2 (autoescape on) into MJML, mjml-python, css-inline, and a
plain-text part from its own template with the same content."""

from __future__ import annotations

import logging
import re
import textwrap
import traceback
from collections import Counter, OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes

from digest_mailer import card
from digest_mailer.errors import RenderError
from digest_mailer.inline import inline_css
from digest_mailer.marks import DigestTemplate, Marks, one_line, rewritten
from digest_mailer.models import Digest, Match, ReasonKind, RenderedDigest, Subscriber
from digest_mailer.sandbox import Sandbox, TemplateLoader, alters_personal

logger = logging.getLogger(__name__)

# A subscriber whose values need escaping everywhere: the once-per-run check renders them.
PROBE_NAME = "Zoë O'Neil & <Co> \"Q\""
PROBE_EMAIL = "o'neil&co+probe@example.org"

HTML_TEMPLATE = "digest.mjml.j2"
TEXT_TEMPLATE = "digest.txt.j2"
SUBJECT_TEMPLATE = "subject.txt.j2"
MAX_AUTHORS = 3
BLURB_CHARS = 320
SUBJECT_TOPICS = 3


def shipped_templates() -> Path:
    """The templates installed inside the package; in a source checkout, the repo's templates/."""
    here = Path(__file__).resolve().parent
    installed = here / "templates"
    return installed if installed.is_dir() else here.parent / "templates"


@dataclass(frozen=True, slots=True)
class PaperView:
    """One paper as the templates show it: presentation decided here, not in the templates."""

    title: str
    url: str
    byline: str
    blurb: str
    links: tuple[tuple[str, str], ...]
    why: str
    day: str = ""  # the paper's own date
    stars: str = ""
    comments: str = ""
    discussion_url: str = ""
    reasons: tuple[card.ReasonView, ...] = ()


def byline(match: Match) -> str:
    p = match.paper
    authors = list(p.authors[:MAX_AUTHORS])
    parts = []
    if authors:
        parts.append(", ".join(authors) + (" et al." if len(p.authors) > MAX_AUTHORS else ""))
    if p.organization:
        parts.append(card.shorten(p.organization, card.MAX_ORGANIZATION))
    parts.append(f"▲\u00a0{p.upvotes}\u00a0upvote{'s' if p.upvotes != 1 else ''}")
    return " · ".join(parts)


def blurb(match: Match, limit: int = BLURB_CHARS) -> str:
    """The one-line AI summary when there is one, else the abstract cut at a word boundary."""
    p = match.paper
    text = card.plain(p.ai_summary) if p.ai_summary else card.contribution(card.plain(p.abstract))
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:.-") + "…"


def paper_view(match: Match, run_date: date | None = None) -> PaperView:
    p = match.paper
    links = [("Hugging Face", p.hf_url), ("arXiv", p.arxiv_url), ("PDF", p.pdf_url)]
    if p.github_url:
        stars = card.stars(p)
        links.append((f"Code {stars}" if stars else "Code", p.github_url))
    if p.project_url and p.project_url != p.github_url:
        links.append(("Project page", p.project_url))
    # A subscriber who takes every paper needs no reason per paper.
    why = "" if all(r.kind is ReasonKind.EVERYTHING for r in match.reasons) else match.why
    day = card.paper_day(p)
    return PaperView(title=card.title(p), url=p.hf_url, byline=byline(match),
                     blurb=blurb(match), links=tuple(links), why=why,
                     day=card.short_date(day, run_date or day) if day else "",
                     stars=card.stars(p), comments=card.comments(p),
                     discussion_url=p.discussion_url, reasons=card.reasons(match))


def following(sub: Subscriber) -> str:
    parts = []
    if sub.topics:
        parts.append(("the topics " if len(sub.topics) > 1 else "the topic ")
                     + ", ".join(sub.topics))
    if sub.authors:
        parts.append(("the authors " if len(sub.authors) > 1 else "the author ")
                     + ", ".join(sub.authors))
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


@dataclass(frozen=True, slots=True)
class _Part:
    template: jinja2.Template
    origin: str  # what an error blames: a file, or the config key
    personal: bool


class Renderer:
    """The Jinja2 environments (sandboxed) and the compile steps. One per run."""

    def __init__(self, templates_dir: Path | None = None, subject_template: str | None = None
                 ) -> None:
        if templates_dir is not None and not templates_dir.is_dir():
            raise RenderError(f"newsletter.templates_dir: {templates_dir} is not a folder",
                              hint="create it, or remove newsletter.templates_dir to use the "
                                   "shipped templates")
        self._dirs = [str(d) for d in (templates_dir, shipped_templates()) if d is not None]
        self._custom = str(templates_dir) if templates_dir is not None else None
        loader = TemplateLoader(self._dirs)
        common: dict[str, Any] = {"loader": loader, "undefined": jinja2.StrictUndefined,
                                  "keep_trailing_newline": True}
        html_env = Sandbox(autoescape=True, **common)
        text_env = Sandbox(autoescape=False, **common)
        text_env.filters["wrap"] = _wrap
        self._html = self._load(html_env, HTML_TEMPLATE)
        self._text = self._load(text_env, TEXT_TEMPLATE)
        self._subject = (self._compile_subject(text_env, subject_template) if subject_template
                         else self._load(text_env, SUBJECT_TEMPLATE))
        # Bodies rendered with marks, by digest, for when only the subject is personal.
        self._bodies: OrderedDict[tuple[object, ...], tuple[Marks, str, str]] = OrderedDict()
        self._verified = False
        # One nonce for every digest this renderer makes: as unguessable to a feed as one per
        # digest, and the patterns that find the marks are then the same for every digest
        # (compiled once, where a new nonce per digest compiled three a digest: a tenth of it).
        self._marks = Marks.new()

    @property
    def personal(self) -> bool:
        """Whether some template must be rendered with each subscriber's real values."""
        return self._html.personal or self._text.personal or self._subject.personal

    def personal_origins(self) -> tuple[str, ...]:
        """The templates rendered per subscriber (they change a subscriber's values)."""
        return tuple(p.origin for p in (self._html, self._text, self._subject) if p.personal)

    def _hint(self, origin: str) -> str:
        if origin == "newsletter.subject":
            return ("fix newsletter.subject in the config; its variables: newsletter, count, "
                    "topics, more_topics, authors, date, name, email")
        if self._custom and origin.startswith(self._custom):
            return f"fix {origin} (it overrides the shipped template) or remove it"
        return "the shipped template failed: reinstall digest-mailer"

    def _load(self, env: jinja2.Environment, name: str) -> _Part:
        assert env.loader is not None
        try:
            filename = env.loader.get_source(env, name)[1] or name
        except jinja2.TemplateNotFound as e:
            raise RenderError(f"template {name!r} not found in {', '.join(self._dirs)}",
                              hint="reinstall digest-mailer or fix newsletter.templates_dir"
                              ) from e
        try:
            template = env.get_template(name)
            personal = self._personal(env, env.parse(env.loader.get_source(env, name)[0]),
                                      {name})
        except jinja2.TemplateSyntaxError as e:
            where = e.filename or filename
            raise RenderError(f"{where}:{e.lineno}: template syntax error: {e.message}",
                              hint=self._hint(where)) from e
        except jinja2.TemplateNotFound as e:
            raise RenderError(f"{filename}: it uses the template {e.name!r}, which is not in "
                              f"{', '.join(self._dirs)}", hint=self._hint(filename)) from e
        except RecursionError as e:  # the parser and the compiler recurse
            raise RenderError(f"{filename}: nested too deeply to compile",
                              hint=self._hint(filename)) from e
        return _Part(template, filename, personal)

    def _compile_subject(self, env: jinja2.Environment, source: str) -> _Part:
        try:
            template = env.from_string(source)
            personal = self._personal(env, env.parse(source), set())
        except jinja2.TemplateSyntaxError as e:
            raise RenderError(f"newsletter.subject: template syntax error: {e.message} "
                              f"(in {source[:200]!r})",
                              hint=self._hint("newsletter.subject")) from e
        except RecursionError as e:
            raise RenderError("newsletter.subject: nested too deeply to compile",
                              hint=self._hint("newsletter.subject")) from e
        return _Part(template, "newsletter.subject", personal)

    def _personal(self, env: jinja2.Environment, ast: nodes.Template, seen: set[str]) -> bool:
        """Also looks into what the template includes, imports or extends."""
        if alters_personal(ast):
            return True
        for name in jinja2.meta.find_referenced_templates(ast):
            if name is None:
                return True  # a name computed at render time: assume the worst
            if name in seen or env.loader is None:
                continue
            seen.add(name)
            if self._personal(env, env.parse(env.loader.get_source(env, name)[0]), seen):
                return True
        return False

    def context(self, digest: Digest, name: str, email: str, url: str) -> dict[str, Any]:
        sub = digest.subscriber
        terms = top_terms(digest.matches, ReasonKind.TOPIC)
        count = len(digest.matches)
        return {
            "newsletter": digest.newsletter,
            "date": digest.run_date.isoformat(),
            "date_long": f"{digest.run_date:%A}, {digest.run_date.day} {digest.run_date:%B %Y}",
            "name": name if sub.name else "",
            "email": email,
            "count": count,
            "over_cap": digest.over_cap,
            "papers": [paper_view(m, digest.run_date) for m in digest.matches],
            "topics": terms[:SUBJECT_TOPICS],
            "more_topics": max(len(terms) - SUBJECT_TOPICS, 0),
            "authors": top_terms(digest.matches, ReasonKind.AUTHOR)[:SUBJECT_TOPICS],
            "following": following(sub),
            "unsubscribe_url": url,
            "preview": one_line(f"{count} new: " + "; ".join(card.title(m.paper) for m
                                                            in digest.matches[:3]), 150),
        }

    def _render(self, part: _Part, ctx: dict[str, Any]) -> str:
        env = part.template.environment
        try:
            with env.bounded() if isinstance(env, Sandbox) else nullcontext():
                return part.template.render(ctx)
        except Exception as e:  # an operator's template can raise anything (1/0, a sandbox
            # refusal, an undefined name): it is that template's fault, said as such
            line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__))
                         if f.filename in (part.origin, "<template>")), None)
            where = part.origin + (f":{line}" if line and part.origin.endswith(".j2") else "")
            raise RenderError(f"{where}: rendering failed: {type(e).__name__}: {e}",
                              hint=self._hint(part.origin)) from e

    def _filled(self, part: _Part, ctx: dict[str, Any]) -> str:
        """A text part that renders nothing (or only spaces) cannot be spliced into an email:
        said as that template's fault, not as a failure of the email package."""
        out = self._render(part, ctx)
        if not one_line(out, len(out) + 1):
            raise RenderError(f"{part.origin}: renders nothing for this digest",
                              hint=self._hint(part.origin))
        return out

    def _real(self, digest: Digest) -> dict[str, Any]:
        sub = digest.subscriber
        return self.context(digest, sub.name, sub.email, digest.unsubscribe_url)

    def verify(self, digest: Digest) -> None:
        """Once per renderer, on the first digest: a subscriber with awkward values (quotes,
        ampersands, angle brackets, accents) rendered both ways, with marks then filled, and
        with the values themselves. A template whose output differs (a value in CSS, which
        the inliner rewrites; anything the syntax check cannot see) is rendered per subscriber
        from then on."""
        if self._verified or self.personal:
            return
        self._verified = True
        probe = replace(digest, subscriber=replace(digest.subscriber, name=PROBE_NAME,
                                                   email=PROBE_EMAIL))
        real = self.render(probe)
        t = self.render_template(probe)
        values = (PROBE_NAME, PROBE_EMAIL, probe.unsubscribe_url)
        differs = {"html": t.fill_html(t.html, *values) != real.html,
                   "text": t.fill_text(t.text, *values) != real.text,
                   "subject": t.fill_subject(*values) != real.subject}
        if any(differs.values()):
            logger.warning("%s: the template changes a subscriber's values in a way shared "
                           "rendering cannot follow; each email is rendered on its own",
                           ", ".join(getattr(self, f"_{k}").origin for k, d in differs.items()
                                     if d))
            self._html = replace(self._html, personal=self._html.personal or differs["html"])
            self._text = replace(self._text, personal=self._text.personal or differs["text"])
            self._subject = replace(self._subject,
                                    personal=self._subject.personal or differs["subject"])
            self._bodies.clear()

    def template_key(self, digest: Digest) -> tuple[object, ...]:
        """Digests with equal keys render to the same template. When a template uses a
        subscriber's value other than by printing it, or the value holds characters MJML
        rewrites, each subscriber has their own."""
        self.verify(digest)
        key = template_key(digest)
        if self.personal or rewritten(digest):
            sub = digest.subscriber
            return (*key, sub.name, sub.email, digest.unsubscribe_url)
        return key

    def render_template(self, digest: Digest, marks: Marks | None = None) -> DigestTemplate:
        """The email for everyone who shares this digest's template key, with marks where each
        subscriber's name, address and unsubscribe link go (or their real values, in the
        templates that need them)."""
        self.verify(digest)
        marks = marks or self._marks
        if rewritten(digest):
            # Rendered with the values themselves: the template holds no marks to fill.
            done = self.render(digest)
            return DigestTemplate(subject=done.subject, html=done.html, text=done.text,
                                  marks=marks)
        real = self._real(digest) if self.personal else {}
        if self._html.personal or self._text.personal:
            ctx = self.context(digest, *marks.all())
            html = (self._compile(self._render(self._html, real)) if self._html.personal
                    else marks.placed(self._compile(self._render(self._html, ctx))))
            text = self._filled(self._text, real if self._text.personal else ctx)
        else:
            marks, html, text = self._bodies_for(digest, marks)
        subject = self._render(self._subject, real if self._subject.personal else
                               self.context(digest, *marks.all()))
        return DigestTemplate(subject=subject, html=html, text=text, marks=marks)

    def _bodies_for(self, digest: Digest, marks: Marks) -> tuple[Marks, str, str]:
        key = template_key(digest)
        found = self._bodies.get(key)
        if found is None:
            ctx = self.context(digest, *marks.all())
            found = (marks, marks.placed(self._compile(self._render(self._html, ctx))),
                     self._filled(self._text, ctx))
            self._bodies[key] = found
            if len(self._bodies) > 8:
                self._bodies.popitem(last=False)
        return found

    def _compile(self, mjml_source: str) -> str:
        try:
            return compile_mjml(mjml_source)
        except RenderError as e:
            raise RenderError(f"{self._html.origin}: {e.message}",
                              hint=self._hint(self._html.origin)) from e

    def render(self, digest: Digest) -> RenderedDigest:
        """One subscriber's email, the simple way: every template rendered with their real
        values. The reference the fast path is held to."""
        ctx = self._real(digest)
        return RenderedDigest(subject=one_line(self._render(self._subject, ctx)),
                              html=self._compile(self._render(self._html, ctx)),
                              text=self._filled(self._text, ctx))


def template_key(digest: Digest) -> tuple[object, ...]:
    """Digests with equal keys render to the same template when it is filled by marks:
    everything the templates show except the name, the address and the unsubscribe link."""
    sub = digest.subscriber
    return (digest.newsletter, digest.run_date, digest.over_cap, bool(sub.name),
            following(sub), tuple((m.paper.id, m.reasons) for m in digest.matches))


def compile_mjml(source: str) -> str:
    """MJML -> HTML with the CSS inlined (inline.py); nothing is fetched from the network."""
    from mjml import mjml2html  # heavy imports stay out of `--help`

    try:
        html = mjml2html(source, disable_comments=True, fonts={})
    except Exception as e:  # mjml-python raises a bare exception type of its own
        raise RenderError(f"MJML compile failed: {e}", hint="check digest.mjml.j2") from e
    out = break_lines(inline_css(html))
    # Without a doctype clients render in quirks mode.
    return out if out.lstrip()[:9].lower() == "<!doctype" else "<!doctype html>\n" + out


# The serialiser writes every attribute in double quotes, with `"` inside as &quot; but `<`
# and `>` as they are: a tag runs to the first `>` outside quotes, and a gap between
# attributes is one before `name="`, which cannot occur inside a value.
_TAG = re.compile(r'<[A-Za-z](?:[^<>"]|"[^"]*")*>')
_ATTRIBUTE_GAP = re.compile(r'\s+(?=[\w:-]+=")')


def break_lines(html: str) -> str:
    """Short source lines without changing what renders: a line break between two attributes of
    a tag is the same whitespace as a space. It keeps lines far below 998 octets, and lets a
    subscriber's value change one short line of the encoded message, not a 70 KB one."""
    return _TAG.sub(lambda m: _ATTRIBUTE_GAP.sub("\n", m.group(0)), html)
