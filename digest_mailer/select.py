"""Topic filters, ranking and the reasons behind them: pure functions, no I/O.

How a paper ranks (best first): its match score, then upvotes, then the newer, then the id.
The score adds, for each matching topic, 4 when it is in the title, 3 in the AI keywords, 2
when the abstract mentions it more than once and 1 for a single mention; each matching author
adds 5. A topic found in more than a fifth of the feed (of 10 papers or more) counts only where
it is prominent (title, keywords, or repeated in the abstract): a passing mention of a common
word is noise, not news.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from digest_mailer import aliases as alias_table
from digest_mailer.models import Match, MatchReason, Paper, ReasonKind, Selection, Subscriber
from digest_mailer.textmatch import Normalizer
from digest_mailer.topics import (
    AUTHOR,
    COMMON_MIN_FEED,
    COMMON_SHARE,
    Feed,
    Hit,
    Prepared,
    Topic,
    person_parts,
    same_person,
)


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


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscriber's compiled topics, exclusions and authors."""

    topics: tuple[Topic, ...]
    exclude: tuple[Topic, ...]
    authors: tuple[tuple[str, tuple[str, ...]], ...]  # as written, and its parts
    min_upvotes: int

    @classmethod
    def of(cls, sub: Subscriber, feed: Feed) -> Filter:
        groups = alias_table.BUILTIN + sub.aliases
        return cls(
            topics=tuple(feed.topic(t, groups) for t in sub.topics),
            # The same aliases: excluding `LLM` leaves out "large language models" too.
            exclude=tuple(feed.topic(t, groups) for t in sub.exclude),
            authors=tuple((a, person_parts(a)) for a in sub.authors),
            min_upvotes=sub.min_upvotes,
        )

    def verdicts(self, feed: Feed, offered: Collection[str] = ()) -> list[Verdict]:
        """Every paper of the feed judged, in feed order."""
        hits: list[dict[int, Hit]] = []
        for topic in self.topics:
            found = {i: h for i in topic.candidates(feed)
                     if (h := topic.hit(feed.papers[i])) is not None}
            if len(feed) >= COMMON_MIN_FEED and len(found) > COMMON_SHARE * len(feed):
                found = {i: h for i, h in found.items() if h.prominent}
            hits.append(found)
        excluded: dict[int, str] = {}
        for topic in self.exclude:
            for i in sorted(topic.candidates(feed)):
                h = topic.hit(feed.papers[i])
                if h is not None and i not in excluded:
                    excluded[i] = f"{topic.term!r} in {', '.join(h.fields)}"
        return [self._judge(i, pp, hits, excluded, offered) for i, pp in enumerate(feed.papers)]

    def _judge(self, i: int, pp: Prepared, hits: Sequence[Mapping[int, Hit]],
               excluded: Mapping[int, str], offered: Collection[str]) -> Verdict:
        paper = pp.paper
        if i in excluded:
            return Verdict(paper, None, Drop.EXCLUDED, excluded[i])
        reasons: list[MatchReason] = []
        score = 0
        for topic, found in zip(self.topics, hits, strict=True):
            h = found.get(i)
            if h is not None:
                reasons.append(reason(topic, h))
                score += h.weight
        for shown, parts in self.authors:
            if parts and any(same_person(parts, a) for a in pp.people.get(parts[-1], ())):
                reasons.append(MatchReason(ReasonKind.AUTHOR, shown))
                score += AUTHOR
        if not self.topics and not self.authors:
            reasons = [MatchReason(ReasonKind.EVERYTHING)]
        if not reasons:
            return Verdict(paper, None, Drop.NO_MATCH)
        match = Match(paper, tuple(reasons), score)
        if paper.upvotes < self.min_upvotes:
            return Verdict(paper, match, Drop.LOW_UPVOTES,
                           f"{paper.upvotes} < {self.min_upvotes}")
        if paper.id in offered:
            return Verdict(paper, match, Drop.ALREADY_OFFERED)
        return Verdict(paper, match)


def reason(topic: Topic, h: Hit) -> MatchReason:
    snippet = h.text.snippet(*h.span)
    stemmed = not h.form.alias and (Normalizer.spelling(h.words)
                                     != Normalizer.spelling(topic.term))
    return MatchReason(ReasonKind.TOPIC, topic.term, h.fields, snippet,
                       via=h.form.label if h.form.alias else "", stemmed=stemmed,
                       mentions=h.mentions, words=h.words)


def rank_key(match: Match | Paper) -> tuple[int, int, int, str]:
    """Best match first, then the most upvoted, then the newer paper, then the id: stable."""
    score, paper = (match.score, match.paper) if isinstance(match, Match) else (0, match)
    day = paper.sort_date
    ordinal = day.toordinal() if day is not None else 0
    return (-score, -paper.upvotes, -ordinal, paper.id)


def profile_key(sub: Subscriber) -> tuple[object, ...]:
    """Subscribers with equal keys match the same papers for the same reasons."""
    return (sub.topics, sub.exclude, sub.authors, sub.min_upvotes, sub.aliases)


def _feed(papers: Iterable[Paper] | Feed) -> Feed:
    return papers if isinstance(papers, Feed) else Feed.of(papers)


def ranked_matches(sub: Subscriber, papers: Iterable[Paper] | Feed) -> tuple[Match, ...]:
    """Every paper the subscriber's filters keep, best first, before the ledger and the cap:
    the same for everyone with the same profile_key, so a run computes it once per profile
    (pass a Feed to tokenise the papers once for all profiles)."""
    feed = _feed(papers)
    kept = [v.match for v in Filter.of(sub, feed).verdicts(feed)
            if v.drop is None and v.match is not None]
    return tuple(sorted(kept, key=rank_key))


def select_ranked(sub: Subscriber, ranked: tuple[Match, ...], offered: Collection[str]
                  ) -> Selection:
    fresh = [m for m in ranked if m.paper.id not in offered] if offered else list(ranked)
    return Selection(subscriber=sub, matches=tuple(fresh[: sub.max_papers]),
                     offered=tuple(m.paper.id for m in fresh), matched_total=len(ranked),
                     already_offered=len(ranked) - len(fresh))


def select(sub: Subscriber, papers: Iterable[Paper] | Feed, offered: Collection[str]
           ) -> Selection:
    """The subscriber's new matches, ranked and capped; `offered` ids are never offered again."""
    return select_ranked(sub, ranked_matches(sub, papers), offered)


@dataclass(frozen=True, slots=True)
class Explanation:
    paper: Paper
    kept: bool
    reason: str


def explain(sub: Subscriber, papers: Iterable[Paper] | Feed,
            offered: Mapping[str, tuple[str, bool]]) -> list[Explanation]:
    """For every paper, kept or dropped for this subscriber and why, in rank order.
    `offered` maps a paper id to when it was offered and whether it was in that email."""
    feed = _feed(papers)
    verdicts = sorted(Filter.of(sub, feed).verdicts(feed, offered),
                      key=lambda v: rank_key(v.match or v.paper))
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


def term_matches(term: str, text: str, groups: Sequence[Sequence[str]] = (),
                 field: str = "title") -> bool:
    """Whether a topic finds `text` as a paper's title (or abstract), with the built-in aliases
    and `groups`."""
    feed = Feed.of([Paper(id="0000.00000", title=text if field == "title" else "-",
                          abstract=text if field == "abstract" else "")])
    extra = tuple(tuple(g) for g in groups)
    topic = feed.topic(term, alias_table.BUILTIN + extra)
    return topic.hit(feed.papers[0]) is not None
