"""What one paper's card says, as plain strings: LaTeX turned into text, the sentence that
states the contribution, the paper's facts, and why it was picked. Pure functions; the templates
escape everything (feed text is hostile), so nothing here builds markup."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from digest_mailer.models import Match, MatchReason, Paper, ReasonKind

MAX_TEX = 5000
# Real titles are under 300 characters; the bound only stops a megabyte, and leaves long
# unbroken ones whole (tests/test_hostile.py wraps a 2,000-character title).
MAX_TITLE, MAX_ORGANIZATION = MAX_TEX, 200
MAX_SENTENCE = 2000  # a contribution sentence is a sentence, not a page
_GREEK = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
          "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi",
          "chi", "psi", "omega"]
_SYMBOLS: dict[str, str] = {
    **{g: chr(0x3B1 + i + (1 if i >= 17 else 0)) for i, g in enumerate(_GREEK)},
    **{g.capitalize(): chr(0x391 + i + (1 if i >= 17 else 0)) for i, g in enumerate(_GREEK)},
    "varepsilon": "ε", "vartheta": "ϑ", "varphi": "φ", "ell": "ℓ", "times": "×", "cdot": "·",
    "cdots": "⋯", "ldots": "…", "dots": "…", "leq": "≤", "le": "≤", "geq": "≥", "ge": "≥",
    "neq": "≠", "ne": "≠", "approx": "≈", "sim": "~", "simeq": "≃", "equiv": "≡", "pm": "±",
    "mp": "∓", "infty": "∞", "to": "→", "rightarrow": "→", "leftarrow": "←",
    "Rightarrow": "⇒", "leftrightarrow": "↔", "mapsto": "↦", "in": "∈", "notin": "∉",
    "subset": "⊂", "subseteq": "⊆", "cup": "∪", "cap": "∩", "forall": "∀", "exists": "∃",
    "partial": "∂", "nabla": "∇", "sum": "∑", "prod": "∏", "int": "∫", "sqrt": "√",
    "log": "log", "exp": "exp", "max": "max", "min": "min", "gg": "≫", "ll": "≪",
    "propto": "∝", "circ": "∘", "star": "⋆", "prime": "′", "deg": "°", "%": "%", "&": "&",
    "_": "_", "#": "#", "$": "$", "{": "{", "}": "}", ",": " ", ";": " ", "!": "", " ": " ",
    "quad": " ", "qquad": " ", "top": "ᵀ", "dagger": "†", "emptyset": "∅", "neg": "¬",
    "land": "∧", "lor": "∨", "oplus": "⊕", "otimes": "⊗", "hbar": "ℏ",
}
_BLACKBOARD = {"R": "ℝ", "N": "ℕ", "Z": "ℤ", "Q": "ℚ", "C": "ℂ", "E": "𝔼", "P": "ℙ"}
_SUPER = dict(zip("0123456789+-=()nitT", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱᵗᵀ", strict=True))
_SUB = dict(zip("0123456789+-=()aeijkmnoprstux", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑᵢⱼₖₘₙₒₚᵣₛₜᵤₓ", strict=True))

_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)", re.S)
_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|emph|mathrm|mathbf|mathit|"
                      r"mathsf|mathtt|mathcal|operatorname|boldsymbol|bm|hat|bar|tilde|vec|"
                      r"widehat|widetilde|overline|underline)\s*\{([^{}]*)\}")
_BB = re.compile(r"\\mathbb\s*\{([A-Za-z])\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_COMMAND = re.compile(r"\\([A-Za-z]+|[%&_#${},;! ])")
_SCRIPT = re.compile(r"([\^_])(\{[^{}]*\}|[A-Za-z0-9+\-=()])")
_QUOTES = (("``", "“"), ("''", "”"), ("---", "—"), (" -- ", " – "))
_OPENING = re.compile(r"(^|(?<=[\s(\[]))''(?=\w)")


def _script(m: re.Match[str]) -> str:
    mark, body = m.group(1), m.group(2).strip("{}")
    table = _SUPER if mark == "^" else _SUB
    if body and all(c in table for c in body):
        return "".join(table[c] for c in body)
    return f"{mark}({body})" if len(body) > 1 else mark + body


def _math(body: str) -> str:
    for _ in range(3):  # nested wrappers, inside out
        body = _WRAPPER.sub(r"\1", body)
        body = _BB.sub(lambda m: _BLACKBOARD.get(m.group(1), m.group(1)), body)
        body = _FRAC.sub(r"\1/\2", body)
    body = _COMMAND.sub(lambda m: _SYMBOLS.get(m.group(1), m.group(1)), body)
    body = _SCRIPT.sub(_script, body)
    return " ".join(body.replace("{", "").replace("}", "").split())


def plain(text: str) -> str:
    """LaTeX markup as readable text: `$\\alpha$-flow` -> 'α-flow', `$O(n^2)$` -> 'O(n²)',
    `\\textbf{Fast}` -> 'Fast'. Unknown commands lose their backslash; nothing is dropped."""
    if not any(mark in text for mark in ("\\", "$", "``", "''", " -- ")):
        return text
    if len(text) > MAX_TEX:  # no real title or abstract; the regexes stay linear below this
        return " ".join(text.split())
    text = _MATH.sub(lambda m: _math(m.group(1) or m.group(2) or m.group(3)), text)
    for _ in range(3):
        text = _WRAPPER.sub(r"\1", text)
    text = _COMMAND.sub(lambda m: _SYMBOLS.get(m.group(1), m.group(1)), text)
    text = _OPENING.sub("“", text)
    for tex, shown in _QUOTES:
        text = text.replace(tex, shown)
    return " ".join(text.split())


def shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary with an ellipsis: a feed's title or
    organisation can be a megabyte, and the email must stay an email."""
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:.-") + "…"


def title(paper: Paper) -> str:
    """The title as text, at most MAX_TITLE characters."""
    return shorten(plain(paper.title[:MAX_TEX]), MAX_TITLE)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"“])")
# A short lead-in ("In this paper,", "To address this,", "In this work"), then who does what.
# The lead-in is bounded and the spaces after it possessive: unbounded runs competing for the
# same spaces made a hostile abstract take minutes.
_CONTRIBUTION = re.compile(
    r"^(?:(?:In|Here|To (?:this end|address))\b[^,]{0,200},?\s*+)?"
    r"(?:we|this (?:paper|work)|our (?:work|paper))\s+(?:\w+ly\s+)?"
    r"(?:propose|introduce|present|develop|design|build|release|show|demonstrate)",
    re.I)


def contribution(abstract: str) -> str:
    """The abstract's sentence that says what the paper does ("We propose ..."), else its first
    sentences."""
    sentences = _SENTENCE_END.split(abstract.strip())
    for s in sentences[:12]:
        if len(s) <= MAX_SENTENCE and _CONTRIBUTION.search(s):
            return s
    return abstract


def paper_day(paper: Paper) -> date | None:
    """The paper's own date: when it was published, else the day it was listed."""
    if paper.published_at is not None:
        return paper.published_at.date()
    return paper.listed_on


def short_date(day: date, run_date: date) -> str:
    return f"{day.day} {day:%b}" + ("" if day.year == run_date.year else f" {day.year}")


def count(n: int) -> str:
    """1234 -> '1.2k': a glance, not an audit."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M".replace(".0M", "M")
    if n >= 10_000:
        return f"{n // 1000}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k".replace(".0k", "k")
    return str(n)


@dataclass(frozen=True, slots=True)
class ReasonView:
    """One reason, as the card shows it: 'diffusion' 'in the title', and for a match in the
    abstract or keywords the words around it (before, the match, after)."""

    term: str
    where: str
    before: str = ""
    hit: str = ""
    after: str = ""
    note: str = ""  # "as 'large language model'"
    author: bool = False

    @property
    def text(self) -> str:
        """The reason in one line of plain text, the match between asterisks."""
        head = f"{self.term}, {self.where}" if self.where else self.term
        if self.note:
            head += f" ({self.note})"
        if self.hit:
            head += f": “{self.before}*{self.hit}*{self.after}”"
        return head


def reason_view(r: MatchReason) -> ReasonView:
    if r.kind is ReasonKind.AUTHOR:
        return ReasonView(r.term, "an author you follow", author=True)
    note = f"as {r.via!r}" if r.via else ""
    where = r.where
    if r.fields[:1] == ("title",) and "abstract" in r.fields:
        where = "in the title and the abstract"
    best = r.fields[0] if r.fields else ""
    # The title is shown just above, and a snippet that is the whole keyword adds nothing.
    show = len(r.snippet) == 3 and (
        best == "abstract" or (best == "title" and "abstract" in r.fields)
        or (best == "keywords" and bool(r.snippet[0].strip() or r.snippet[2].strip())))
    if show:
        before, hit, after = (plain(x).strip() for x in r.snippet)
        # keep the spaces around the match that plain() folds away
        before += " " if r.snippet[0][-1:].isspace() else ""
        after = (" " if r.snippet[2][:1].isspace() else "") + after
        return ReasonView(r.term, where, before, hit, after, note)
    return ReasonView(r.term, where, note=note)


def reasons(match: Match) -> tuple[ReasonView, ...]:
    """Why the paper is in the email; nothing when the subscriber takes every paper. One
    snippet per card, the first reason's that has one: more would crowd the card and push a
    20-paper email towards Gmail's clipping limit."""
    views = [reason_view(r) for r in match.reasons if r.kind is not ReasonKind.EVERYTHING]
    first = next((i for i, v in enumerate(views) if v.hit), None)
    return tuple(v if i == first or not v.hit else ReasonView(v.term, v.where, note=v.note)
                 for i, v in enumerate(views))


def stars(paper: Paper) -> str:
    n = paper.github_stars
    return f"★\u00a0{count(n)}" if n else ""


def comments(paper: Paper) -> str:
    n = paper.num_comments
    return f"{count(n)}\u00a0comment{'s' if n != 1 else ''}" if n > 0 else ""
