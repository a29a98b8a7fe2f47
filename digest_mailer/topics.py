"""A profile's topics against one run's papers: the papers tokenised once and indexed by
stem, each topic compiled with its aliases, and where each topic matches in each paper. Pure:
no I/O. `select.py` turns these hits into verdicts, ranks and reasons."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from digest_mailer import aliases as alias_table
from digest_mailer.models import Paper
from digest_mailer.textmatch import Normalizer, Text, fold, joinable

WEIGHTS = {"title": 4, "keywords": 3}
REPEATED, ONCE, AUTHOR = 2, 1, 5
COMMON_SHARE = 0.2  # a topic in more than this share of the feed is "common"
COMMON_MIN_FEED = 10  # ... when the feed is big enough to say so
COMMON_MENTIONS = 3  # ... unless in the title, the keywords, or this often in the abstract
# What of a field is matched: real titles are under 300 characters and abstracts under 3,000;
# a feed item of a megabyte must not cost a run its time.
MAX_TITLE, MAX_ABSTRACT, MAX_KEYWORD, MAX_KEYWORDS = 1_000, 20_000, 200, 50
STOPWORDS = frozenset({"a", "an", "the", "of", "for", "in", "on", "to", "and", "with", "from",
                       "by", "via", "as", "at", "or"})


def person_parts(name: str) -> tuple[str, ...]:
    """A name's parts, without case, accents or dots; hyphens split given names and surnames
    alike: 'Jean-Pierre A. Dupont' -> ('jean', 'pierre', 'a', 'dupont')."""
    return tuple(fold(name).replace(".", " ").replace("-", " ").split())


def same_person(follow: tuple[str, ...], author: tuple[str, ...]) -> bool:
    """Whether an author is the person a subscriber follows. The surname is equal; the first
    name is equal, or the subscriber wrote only its initial ('Y. Choi'); middle names are equal
    or initials of each other, and one side may leave out middle initials. Never the other way:
    a paper's 'Y. Choi' may be anyone, and 'Ming Li' is not 'Ming Xiao Li'."""
    if follow == author:
        return True
    if len(follow) < 2 or len(author) < 2 or follow[-1] != author[-1]:
        return False
    f0, a0 = follow[0], author[0]
    if not (f0 == a0 or (len(f0) == 1 and a0.startswith(f0))):
        return False
    fm, am = follow[1:-1], author[1:-1]
    if not fm or not am:
        return all(len(m) == 1 for m in fm + am)
    return len(fm) == len(am) and all(
        f == a or (len(f) == 1 and a.startswith(f)) or (len(a) == 1 and f.startswith(a))
        for f, a in zip(fm, am, strict=True))


@dataclass(frozen=True, slots=True, eq=False)
class Prepared:
    """One paper with its fields tokenised, once per run."""

    paper: Paper
    title: Text
    abstract: Text
    keywords: tuple[Text, ...]
    people: dict[str, tuple[tuple[str, ...], ...]]  # surname -> the authors' name parts

    def fields(self) -> Iterable[tuple[str, Text]]:
        yield "title", self.title
        yield "abstract", self.abstract
        for k in self.keywords:
            yield "keywords", k


@dataclass(frozen=True, slots=True, eq=False)
class Feed:
    """The papers of one run, tokenised once, with an index from each stem to the papers that
    hold it: a profile's topics are then looked up, not searched for, in every paper."""

    papers: tuple[Prepared, ...]
    index: dict[str, frozenset[int]]
    normalizer: Normalizer
    _topics: dict[tuple[object, ...], Topic] = field(default_factory=dict)

    @classmethod
    def of(cls, papers: Iterable[Paper]) -> Feed:
        norm = Normalizer(alias_table.acronyms(alias_table.BUILTIN))
        prepared = tuple(
            Prepared(p, norm.text(p.title[:MAX_TITLE]), norm.text(p.abstract[:MAX_ABSTRACT]),
                     tuple(norm.text(k[:MAX_KEYWORD]) for k in p.ai_keywords[:MAX_KEYWORDS]),
                     _people(p.authors))
            for p in papers)
        index: dict[str, set[int]] = {}
        for i, pp in enumerate(prepared):
            for _name, text in pp.fields():
                for stem in text.vocabulary():
                    index.setdefault(stem, set()).add(i)
        return cls(prepared, {k: frozenset(v) for k, v in index.items()}, norm)

    def __len__(self) -> int:
        return len(self.papers)

    def topic(self, term: str, groups: tuple[tuple[str, ...], ...]) -> Topic:
        """A term compiled with its aliases; cached, as every profile shares the vocabulary."""
        key = (term, groups)
        found = self._topics.get(key)
        if found is None:
            found = self._topics[key] = Topic.of(term, groups, self.normalizer)
        return found


@dataclass(frozen=True, slots=True)
class Form:
    """One way of writing a topic: its stems, and the stem of its words written as one."""

    label: str
    stems: tuple[str, ...]
    joined: str | None
    alias: bool


@dataclass(frozen=True, slots=True)
class Hit:
    """Where one topic matched in one paper."""

    fields: tuple[str, ...]  # best first
    text: Text
    span: tuple[int, int]
    form: Form
    mentions: int  # in the abstract
    words: str  # the matched words as written in the best field

    @property
    def prominent(self) -> bool:
        return self.fields[0] in WEIGHTS or self.mentions >= COMMON_MENTIONS

    @property
    def weight(self) -> int:
        best = self.fields[0]
        return WEIGHTS.get(best) or (REPEATED if self.mentions > 1 else ONCE)


@dataclass(frozen=True, slots=True)
class Topic:
    term: str
    forms: tuple[Form, ...]

    @classmethod
    def of(cls, term: str, groups: tuple[tuple[str, ...], ...], norm: Normalizer) -> Topic:
        def form(label: str, alias: bool) -> Form:
            stems = norm.words(label)
            raws = Normalizer.written(label)
            together = len(stems) > 1 and joinable([fold(r) for r in raws])
            return Form(label, stems, norm.joined(raws) if together else None, alias)

        own = form(term, False)
        forms = [own]
        seen = {own.stems}
        for group in groups:
            names = [form(n, True) for n in group]
            for i, name in enumerate(names):
                if not name.stems:
                    continue
                whole = name.stems == own.stems or bool(name.joined and name.joined == own.joined)
                at = _find(own.stems, name.stems) if not whole else 0
                if at < 0:
                    continue
                # The topic is this name, or holds it ("LLM reasoning"): every other name
                # of the group stands in for it.
                for j, other in enumerate(names):
                    if j == i:
                        continue
                    if whole:
                        new = other
                    else:
                        stems = own.stems[:at] + other.stems + own.stems[at + len(name.stems):]
                        new = Form(f"{other.label} (in {term!r})", stems, None, True)
                    if new.stems not in seen:
                        seen.add(new.stems)
                        forms.append(new)
                break
        return cls(term, tuple(forms))

    def candidates(self, feed: Feed) -> set[int]:
        out: set[int] = set()
        for f in self.forms:
            if not f.stems:  # a topic with no words ("--", an emoji) matches nothing
                continue
            out.update(feed.index.get(f.stems[0], ()))
            if f.joined:
                out.update(feed.index.get(f.joined, ()))
        return out

    def hit(self, pp: Prepared) -> Hit | None:
        """The best place this topic matches in the paper, or None: the best field, and in it
        the topic as written before an alias."""
        where: list[str] = []
        best: tuple[str, Text, tuple[int, int], Form] | None = None
        context: tuple[Text, tuple[int, int]] | None = None
        mentions = 0
        for name, text in pp.fields():
            for f in self.forms:
                spans = occurrences(name, text, f)
                if not spans:
                    continue
                if name == "abstract":
                    mentions += len(spans)
                    context = context or (text, spans[0])
                if name not in where:
                    where.append(name)
                if best is None or _rank(name) < _rank(best[0]) or (
                        name == best[0] and best[3].alias and not f.alias):
                    best = (name, text, spans[0], f)
        if best is None:
            return None
        # A match in the title shows its context from the abstract, when it is there too.
        text, span = context if best[0] == "title" and context else (best[1], best[2])
        words = best[1].source[best[1].spans[best[2][0]][0]:best[1].spans[best[2][1] - 1][1]]
        return Hit(tuple(sorted(where, key=_rank)), text, span, best[3], mentions, words)


def _people(authors: Iterable[str]) -> dict[str, tuple[tuple[str, ...], ...]]:
    out: dict[str, list[tuple[str, ...]]] = {}
    for a in authors:
        parts = person_parts(a)
        if parts:
            out.setdefault(parts[-1], []).append(parts)
    return {k: tuple(v) for k, v in out.items()}


def _find(haystack: Sequence[str], needle: Sequence[str]) -> int:
    n = len(needle)
    return next((i for i in range(len(haystack) - n + 1)
                 if tuple(haystack[i:i + n]) == tuple(needle)), -1)


def _rank(field_name: str) -> int:
    return ("title", "keywords", "abstract").index(field_name)


def occurrences(name: str, text: Text, form: Form) -> list[tuple[int, int]]:
    found = text.find(form.stems)
    if form.joined:
        # "fine-tuning" is both the words and the joined word: count each place once.
        starts = {b for b, _e in found}
        found += [span for span in text.find((form.joined,)) if span[0] not in starts]
    if found:
        return found
    if len(form.stems) == 2 and not STOPWORDS.intersection(form.stems):
        found = text.near(*form.stems)
    # A title that holds every word of a short topic is about it, in any order ("Reasoning
    # ... in Large Language Models" for `LLM reasoning`); not for phrases with small words:
    # `text-to-image` is not "image to text".
    if (not found and name == "title" and 2 <= len(form.stems) <= 4
            and not STOPWORDS.intersection(form.stems)):
        span = text.has_all(form.stems)
        found = [span] if span else []
    return found
