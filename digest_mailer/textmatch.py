"""How a topic and a paper's text are put into one shape before they are compared: pure
functions and frozen values, no I/O.

Both sides go through the same steps, token by token: Unicode NFKC, case folded, accents
dropped, British spellings turned American (`quantisation` = `quantization`), an acronym's
plural made singular (`LLMs` = `LLM`), then the Snowball English stemmer (`models` = `model`,
`robotics` = `robotic` = `robot`). Tokens are whole words, so `flow` never finds "overflow" and
`RAG` never "leverage". Hyphens and spaces split words alike, and a word written joined matches
the same words written apart (`multimodal` = `multi-modal` = `multi modal`).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import Stemmer

# Invisible characters that may sit inside a word (soft hyphen, zero-width space and joiners,
# direction marks, word joiner, BOM): part of the word, then dropped.
_INVISIBLE_CHARS = "\u00ad\u0640\u200b-\u200f\u2060\ufeff"  # and the Arabic tatweel
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
# Combining accents written apart from their letter ("e" + U+0301) belong to its word.
# So do Hebrew points and Arabic vowel marks, which writers may leave out.
_COMBINING = ("\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
              "\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed")
# A word: letters and digits; `C++` and `C#` keep their sign. One character class per step,
# so no input makes it backtrack.
_WORD = re.compile(f"[^\\W_](?:[^\\W_]|[{_INVISIBLE_CHARS}{_COMBINING}])*(?:\\+\\+|#)?")
# `LLMs`, `MoEs`, `ViTs`, `GPUs`: an acronym whose plural is a lowercase s.
_ACRONYM_PLURAL = re.compile(r"^[A-Z][A-Za-z0-9]*[A-Z0-9]s$")
_BREAK = re.compile(r"[.;:!?()\[\]]")
SNIPPET_SIDE = 80  # characters of context a side, at most
# Words joined from at most this many written apart ("multi-modal" -> "multimodal").
MAX_JOIN = 3

# British -> American, by suffix (applied to both sides, so a word that only looks British
# still matches itself) and by word where a suffix rule would catch innocent words.
_SUFFIXES = (("isabilities", "izabilities"), ("isability", "izability"), ("isable", "izable"),
             ("isations", "izations"), ("isation", "ization"), ("ising", "izing"),
             ("ised", "ized"), ("ises", "izes"), ("isers", "izers"), ("iser", "izer"),
             ("ise", "ize"))
_WORDS = {
    "behaviour": "behavior", "behaviours": "behaviors", "behavioural": "behavioral",
    "colour": "color", "colours": "colors", "neighbour": "neighbor", "neighbours": "neighbors",
    "neighbourhood": "neighborhood", "favour": "favor", "labour": "labor", "humour": "humor",
    "rumour": "rumor", "flavour": "flavor", "vapour": "vapor", "tumour": "tumor",
    "tumours": "tumors", "armour": "armor", "endeavour": "endeavor", "centre": "center",
    "centres": "centers", "centred": "centered", "metre": "meter", "metres": "meters",
    "fibre": "fiber", "litre": "liter", "theatre": "theater", "catalogue": "catalog",
    "dialogue": "dialog", "dialogues": "dialogs", "analogue": "analog", "defence": "defense",
    "offence": "offense", "licence": "license", "grey": "gray", "programme": "program",
    "programmes": "programs", "modelling": "modeling", "modelled": "modeled",
    "labelling": "labeling", "labelled": "labeled", "travelling": "traveling",
    "signalling": "signaling", "cancelled": "canceled", "aluminium": "aluminum",
    "paediatric": "pediatric", "oesophageal": "esophageal", "anaemia": "anemia",
    "haemorrhage": "hemorrhage", "manoeuvre": "maneuver", "artefact": "artifact",
    "artefacts": "artifacts", "sceptical": "skeptical", "plough": "plow",
    "learnt": "learned", "spelt": "spelled", "dreamt": "dreamed",
    # Greek plurals the stemmer keeps apart from their singular
    "analyses": "analysis", "hypotheses": "hypothesis", "syntheses": "synthesis",
    "diagnoses": "diagnosis", "parentheses": "parenthesis", "theses": "thesis",
}
# Words that end like a British -ise spelling but are not one.
_NOT_BRITISH = frozenset({
    "promise", "promised", "promises", "noise", "noises", "precise", "wise", "otherwise",
    "likewise", "rise", "rises", "raise", "raised", "raises", "expertise", "exercise",
    "exercises", "surprise", "surprised", "surprises", "concise", "paradise", "enterprise",
    "enterprises", "comprise", "comprised", "comprises", "revise", "revised", "revises",
    "supervise", "supervised", "supervises", "supervising", "advise", "advised", "devise",
    "devised", "compromise", "compromised", "premise", "premises", "franchise", "clockwise",
    "pairwise", "pointwise", "stepwise", "layerwise", "elementwise", "listwise", "noisy",
    "disguise", "disguised", "arise", "arises", "arising", "arised", "denoise", "denoised",
    "denoising", "raising", "rising", "praise", "bruise", "cruise", "poised", "poise",
    "ises", "isers", "despise", "chemise", "incise", "excise", "mortise", "reprise",
    "advisable", "inadvisable", "revisable", "devisable", "supervisable",
})
_ANALYSE = {"analyse": "analyze", "analysed": "analyzed", "analysing": "analyzing",
            "paralyse": "paralyze", "catalyse": "catalyze"}
# Where the Snowball stemmer gives one stem to words of different meanings, each word's own
# stem: "experience" is not "experiment", "animals" not "animation", "probably" not
# "probability", "objectives" not "objects".
_OWN_STEM = {
    **dict.fromkeys(("experience", "experiences", "experienced", "experiencing"), "experienc"),
    **dict.fromkeys(("animal", "animals"), "animal"),
    "probably": "probably",
    **dict.fromkeys(("authority", "authorities"), "authoriti"),
    **dict.fromkeys(("objective", "objectives", "objectively"), "objectiv"),
    **dict.fromkeys(("emergency", "emergencies"), "emergenci"),
    **dict.fromkeys(("majority", "majorities"), "majoriti"),
    "several": "several", "numerous": "numerous",
    **dict.fromkeys(("relative", "relatives", "relatively"), "relativ"),
    # to ground (a model's answers) is not the ground of "ground truth"
    **dict.fromkeys(("grounding", "grounded", "groundings"), "grounding"),
}
# The stemmer takes -ize and -ization back to the base word, which often means something else:
# "generalization" is not "general", "tokenization" not "tokens", "optimizer" not "optimal".
# Every -ize form keeps a mark, so they match each other and not the base.
_IZE = re.compile(r"iz(?:e|es|ed|ing|er|ers|ation|ations|ational)$")
_IZABLE = re.compile(r"iz(?:able|ability|abilities)$")  # "generalizable": of the same family
_IZE_MARK = "_iz"  # "_" is never part of a word, so no written word ends like this
# Greek letters read as their names: "α-divergence" = "alpha-divergence" (LaTeX's "\alpha").
_GREEK = {chr(c): unicodedata.name(chr(c)).rsplit(" ", 1)[-1].lower()
          for c in range(0x3B1, 0x3CA)}
_GREEK["ς"] = "sigma"


def fold(word: str) -> str:
    """NFKC, case folded, accents and invisible characters dropped, Greek letters named:
    'Ｍｏｄｅｌ' -> 'model', 'Fréchet' -> 'frechet', 'β' -> 'beta'."""
    text = unicodedata.normalize("NFKC", word).casefold()
    if text.isascii():
        return text
    text = _INVISIBLE.sub("", text)
    if any(c in _GREEK for c in text):
        text = "".join(_GREEK.get(c, c) for c in text)
    decomposed = unicodedata.normalize("NFKD", text.replace("ł", "l").replace("ø", "o"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def joinable(raws: Sequence[str]) -> bool:
    """Words that may be one word written apart: letters and digits with a letter among them
    ("GPT 4" = "GPT-4" = "GPT4", "3-D" = "3D"); numbers alone, or `C++`, never."""
    return (all(r.isalnum() for r in raws) and any(not r.isdigit() for r in raws))


def americanize(word: str) -> str:
    if word in _WORDS:
        return _WORDS[word]
    if word in _ANALYSE:
        return _ANALYSE[word]
    if word in _NOT_BRITISH or len(word) < 6:
        return word
    for british, american in _SUFFIXES:
        if word.endswith(british):
            return word[: -len(british)] + american
    return word


@dataclass(frozen=True, slots=True)
class Normalizer:
    """The one normalisation both sides share. `acronyms`: casefolded acronyms whose
    lowercase plural (`llms`) is singular too; an uppercase plural (`LLMs`) always is."""

    acronyms: frozenset[str] = frozenset()
    stemmer: Stemmer.Stemmer = field(default_factory=lambda: Stemmer.Stemmer("english"),
                                     compare=False, hash=False)
    # A feed repeats its words: each is normalised once per run.
    _seen: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)
    _folded: dict[str, str] = field(default_factory=dict, compare=False, hash=False,
                                    repr=False)

    def word(self, raw: str) -> str:
        """One written word -> its comparable form (a stem)."""
        found = self._seen.get(raw)
        if found is None:
            found = self._seen[raw] = self._word(raw)
        return found

    def _word(self, raw: str) -> str:
        if _ACRONYM_PLURAL.match(raw):
            raw = raw[:-1]
        w = fold(raw)
        if w.endswith("s") and w[:-1] in self.acronyms:
            return w[:-1]
        if not w.isalpha():
            return w
        w = _IZABLE.sub("ize", americanize(w))
        own = _OWN_STEM.get(w)
        if own is not None:
            return own
        stem = str(self.stemmer.stemWord(w))
        return stem + _IZE_MARK if _IZE.search(w) else stem

    @staticmethod
    def written(text: str) -> list[str]:
        """The words of `text` as written."""
        return _WORD.findall(text)

    @staticmethod
    def spelling(text: str) -> tuple[str, ...]:
        """The words as written, case and accents aside: what tells a stem match."""
        return tuple(fold(m.group(0)) for m in _WORD.finditer(text))

    def words(self, text: str) -> tuple[str, ...]:
        return tuple(self.word(m.group(0)) for m in _WORD.finditer(text))

    def joined(self, raws: Sequence[str]) -> str:
        """Words written apart, as one word ("multi-modal" -> the stem of "multimodal")."""
        return self.word("".join(fold(r) for r in raws))

    def fold(self, raw: str) -> str:
        found = self._folded.get(raw)
        if found is None:
            found = self._folded[raw] = fold(raw)
        return found

    def text(self, source: str) -> Text:
        found = list(_WORD.finditer(source))
        raws = [m.group(0) for m in found]
        stems = tuple(map(self.word, raws))
        folded = list(map(self.fold, raws))
        positions: dict[str, list[int]] = {}
        for i, s in enumerate(stems):
            positions.setdefault(s, []).append(i)
        # joinable() for every run of words, from two flags per word
        alnum = [f.isalnum() for f in folded]
        letter = [a and not f.isdigit() for a, f in zip(alnum, folded, strict=True)]
        joined: dict[str, dict[int, int]] = {}
        for i in range(len(raws) - 1):
            has_letter = letter[i]
            for j in range(i + 1, min(i + MAX_JOIN, len(raws))):
                if not alnum[i] or not alnum[j]:
                    break
                has_letter = has_letter or letter[j]
                if has_letter:
                    stem = self.word("".join(folded[i:j + 1]))
                    joined.setdefault(stem, {}).setdefault(i, j + 1)
        return Text(source, stems, tuple((m.start(), m.end()) for m in found),
                    {k: tuple(v) for k, v in positions.items()}, joined)


@dataclass(frozen=True, slots=True, eq=False)
class Text:
    """One field of a paper, tokenised once per run: its stems, where each word sits in the
    source (for snippets), and the stems of short runs of words written apart."""

    source: str
    stems: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    positions: dict[str, tuple[int, ...]]  # ascending
    joined: dict[str, dict[int, int]]  # a joined stem -> {first word: past the last}

    def vocabulary(self) -> Iterable[str]:
        yield from self.positions
        yield from self.joined

    def _extend(self, start: int, stems: Sequence[str]) -> int:
        """Where the words `stems` end when they start at word `start`, or -1. A stem may
        match one word, or a few written apart."""
        q = start
        for s in stems:
            if q < len(self.stems) and self.stems[q] == s:
                q += 1
                continue
            end = self.joined.get(s, {}).get(q)
            if end is None:
                return -1
            q = end
        return q

    def find(self, stems: Sequence[str]) -> list[tuple[int, int]]:
        """Every place (first word, past the last word) where these stems occur in order."""
        if not stems:
            return []
        starts = set(self.positions.get(stems[0], ()))
        starts.update(self.joined.get(stems[0], ()))
        found = []
        for p in sorted(starts):
            end = self._extend(p, stems)
            if end > p:
                found.append((p, end))
        return found

    def near(self, a: str, b: str, gap: int = 2) -> list[tuple[int, int]]:
        """Two stems in either order with at most `gap` - 1 words between them, in one
        sentence ("generated code" for `code generation`, "selection of data" for
        `data selection`)."""
        pa, pb = self.positions.get(a, ()), self.positions.get(b, ())
        found = []
        for i in pa:
            # only the few places of `b` within `gap` words of `i` (positions ascend)
            for j in pb[bisect_left(pb, i - gap):bisect_right(pb, i + gap)]:
                lo, hi = min(i, j), max(i, j)
                between = self.source[self.spans[lo][1]:self.spans[hi][0]]
                if 0 < hi - lo <= gap and not _BREAK.search(between):
                    found.append((lo, hi + 1))
        return found

    def has_all(self, stems: Iterable[str]) -> tuple[int, int] | None:
        """The span from the first to the last of these stems when all occur, else None."""
        places = []
        for s in stems:
            at = self.positions.get(s)
            if not at:
                return None
            places.append(at[0])
        return (min(places), max(places) + 1)

    def snippet(self, start: int, end: int, words: int = 5) -> tuple[str, str, str]:
        """About a dozen words around words start..end: (before, the match, after), with an
        ellipsis where the text goes on."""
        lo, hi = max(start - words, 0), min(end + words + 1, len(self.spans))
        a, b = self.spans[start][0], self.spans[end - 1][1]
        # A dozen words, but never more than SNIPPET_SIDE characters a side: a script without
        # spaces, or a long token, is one "word"; cut between whole characters.
        first = max(self.spans[lo][0], a - SNIPPET_SIDE)
        while first < a and unicodedata.combining(self.source[first]):
            first += 1
        last = min(self.spans[hi - 1][1], b + SNIPPET_SIDE)
        while last > b and last < len(self.source) and unicodedata.combining(self.source[last]):
            last -= 1
        before, after = self.source[first:a], self.source[b:last]
        if lo > 0 or first > self.spans[lo][0]:
            before = "…" + before
        if hi < len(self.spans) or last < self.spans[hi - 1][1]:
            after += "…"
        return (" ".join(before.split()) + (" " if before[-1:].isspace() else ""),
                self.source[a:b], (" " if after[:1].isspace() else "") + " ".join(after.split()))
