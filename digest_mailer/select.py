"""Topic filters, ranking and the reasons behind them: pure functions, no I/O."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from digest_mailer.models import Match, MatchReason, Paper, ReasonKind, Selection, Subscriber


class Drop(StrEnum):
    EXCLUDED = "excluded"
    NO_MATCH = "no topic or author matched"
    LOW_UPVOTES = "below min_upvotes"
    ALREADY_OFFERED = "already offered"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one subscriber's filter says of one paper, before ranking and the cap."""

    paper: Paper
    match: Match | None
    drop: Drop | None = None
    detail: str = ""


def phrase_pattern(term: str) -> re.Pattern[str]:
    """Whole words, any case: 'flow' finds 'normalizing flow', never 'overflow'; the words of a
    phrase may be split by spaces or hyphens."""
    words = [re.escape(w) for w in term.split()]
    return re.compile(r"(?<!\w)" + r"[\s\-]+".join(words) + r"(?!\w)", re.IGNORECASE)


def person_key(name: str) -> str:
    """Author names compare without case or accents: 'Łukasz Kaiser' ~ 'lukasz kaiser'."""
    folded = unicodedata.normalize("NFKD", name.casefold().replace("ł", "l"))
    return " ".join("".join(c for c in folded if not unicodedata.combining(c)).split())


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscriber's compiled topics, exclusions and authors."""

    topics: tuple[tuple[str, re.Pattern[str]], ...]
    exclude: tuple[tuple[str, re.Pattern[str]], ...]
    authors: tuple[tuple[str, str], ...]
    min_upvotes: int

    @classmethod
    def of(cls, sub: Subscriber) -> Filter:
        return cls(
            topics=tuple((t, phrase_pattern(t)) for t in sub.topics),
            exclude=tuple((t, phrase_pattern(t)) for t in sub.exclude),
            authors=tuple((a, person_key(a)) for a in sub.authors),
            min_upvotes=sub.min_upvotes,
        )

    def judge(self, paper: Paper, offered: Collection[str] = ()) -> Verdict:
        fields = _fields(paper)
        for term, pattern in self.exclude:
            where = [name for name, text in fields if pattern.search(text)]
            if where:
                return Verdict(paper, None, Drop.EXCLUDED, f"{term!r} in {', '.join(where)}")
        reasons = [MatchReason(ReasonKind.TOPIC, term, tuple(where))
                   for term, pattern in self.topics
                   if (where := [name for name, text in fields if pattern.search(text)])]
        if self.authors:
            names = {person_key(a) for a in paper.authors}
            reasons += [MatchReason(ReasonKind.AUTHOR, shown) for shown, key in self.authors
                        if key in names]
        if not self.topics and not self.authors:
            reasons = [MatchReason(ReasonKind.EVERYTHING)]
        if not reasons:
            return Verdict(paper, None, Drop.NO_MATCH)
        match = Match(paper, tuple(reasons))
        if paper.upvotes < self.min_upvotes:
            return Verdict(paper, match, Drop.LOW_UPVOTES,
                           f"{paper.upvotes} < {self.min_upvotes}")
        if paper.id in offered:
            return Verdict(paper, match, Drop.ALREADY_OFFERED)
        return Verdict(paper, match)


def _fields(paper: Paper) -> tuple[tuple[str, str], ...]:
    return (("title", paper.title), ("abstract", paper.abstract),
            ("keywords", "\n".join(paper.ai_keywords)))


def rank_key(paper: Paper) -> tuple[int, int, str]:
    """Most upvoted first; ties go to the newer paper, then the id, so order is stable."""
    day = paper.sort_date
    ordinal = day.toordinal() if day is not None else 0
    return (-paper.upvotes, -ordinal, paper.id)


def profile_key(sub: Subscriber) -> tuple[object, ...]:
    """Subscribers with equal keys match the same papers for the same reasons."""
    return (sub.topics, sub.exclude, sub.authors, sub.min_upvotes)


def ranked_matches(sub: Subscriber, papers: Iterable[Paper]) -> tuple[Match, ...]:
    """Every paper the subscriber's filters keep, best first, before the ledger and the cap:
    the same for everyone with the same profile_key, so a run computes it once per profile."""
    flt = Filter.of(sub)
    kept = (v.match for v in (flt.judge(p) for p in papers)
            if v.drop is None and v.match is not None)
    return tuple(sorted(kept, key=lambda m: rank_key(m.paper)))


def select_ranked(sub: Subscriber, ranked: tuple[Match, ...], offered: Collection[str]
                  ) -> Selection:
    fresh = [m for m in ranked if m.paper.id not in offered] if offered else list(ranked)
    return Selection(subscriber=sub, matches=tuple(fresh[: sub.max_papers]),
                     offered=tuple(m.paper.id for m in fresh), matched_total=len(ranked),
                     already_offered=len(ranked) - len(fresh))


def select(sub: Subscriber, papers: Iterable[Paper], offered: Collection[str]) -> Selection:
    """The subscriber's new matches, ranked and capped; `offered` ids are never offered again."""
    return select_ranked(sub, ranked_matches(sub, papers), offered)


@dataclass(frozen=True, slots=True)
class Explanation:
    paper: Paper
    kept: bool
    reason: str


def explain(sub: Subscriber, papers: Iterable[Paper],
            offered: Mapping[str, tuple[str, bool]]) -> list[Explanation]:
    """For every paper, kept or dropped for this subscriber and why, in rank order.
    `offered` maps a paper id to when it was offered and whether it was in that email."""
    flt = Filter.of(sub)
    verdicts = sorted((flt.judge(p, offered) for p in papers), key=lambda v: rank_key(v.paper))
    fresh = [v for v in verdicts if v.drop is None]
    kept = {v.paper.id for v in fresh[: sub.max_papers]}
    out = []
    for v in verdicts:
        if v.drop is None and v.match is not None:
            if v.paper.id in kept:
                out.append(Explanation(v.paper, True, v.match.why))
            else:
                out.append(Explanation(v.paper, False,
                                       f"over the cap (max_papers = {sub.max_papers})"))
        elif v.drop is Drop.ALREADY_OFFERED:
            when, included = offered[v.paper.id]
            day = when[:10]
            out.append(Explanation(v.paper, False, f"already sent on {day}" if included else
                                   f"offered on {day}, over the cap then"))
        elif v.drop is Drop.EXCLUDED:
            out.append(Explanation(v.paper, False, f"excluded by {v.detail}"))
        elif v.drop is Drop.LOW_UPVOTES:
            out.append(Explanation(v.paper, False, f"below min_upvotes ({v.detail})"))
        else:
            out.append(Explanation(v.paper, False, str(Drop.NO_MATCH)))
    return out
