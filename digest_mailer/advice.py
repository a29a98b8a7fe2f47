"""Help for writing topics: which ones found nothing in the recent feeds, and which ones match
so much of every feed that they filter nothing. Pure: the feeds are passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from digest_mailer import aliases as alias_table
from digest_mailer.config import Config
from digest_mailer.models import Paper, Subscriber
from digest_mailer.textmatch import Normalizer, fold
from digest_mailer.topics import STOPWORDS, Feed

BROAD_SHARE = 0.5  # a topic in more than half of every feed filters little
MIN_FEED = 5  # a day with fewer papers says nothing about a topic's share
MAX_LINES = 20
LEDGER_FEEDS = 7  # how many of the last feeds in the ledger the topic warnings look at


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: str
    matched: int  # papers matched over all the feeds
    papers: int
    shares: tuple[float, ...]  # per feed of MIN_FEED papers or more


def topic_stats(topics: Iterable[str], feeds: Mapping[str, Sequence[Paper] | Feed],
                groups: tuple[tuple[str, ...], ...] = ()) -> list[TopicStats]:
    """How often each topic matches, over all the feeds (day -> papers, or the papers already
    tokenised: the sign-up page's preview asks many times over the same feeds) and per feed."""
    prepared = {day: p if isinstance(p, Feed) else Feed.of(p) for day, p in feeds.items()
                if len(p)}
    table = alias_table.BUILTIN + groups
    out = []
    for topic in dict.fromkeys(topics):
        matched = papers = 0
        shares = []
        for feed in prepared.values():
            t = feed.topic(topic, table)
            hits = sum(1 for i in t.candidates(feed) if t.hit(feed.papers[i]) is not None)
            matched += hits
            papers += len(feed)
            if len(feed) >= MIN_FEED:
                shares.append(hits / len(feed))
        out.append(TopicStats(topic, matched, papers, tuple(shares)))
    return out


def wordless(topic: str) -> str | None:
    """What is wrong with a topic whatever the feed says, or None."""
    words = [fold(w) for w in Normalizer.written(topic)]
    if not words:
        return "has no letters or digits, so it matches nothing"
    if all(w in STOPWORDS for w in words):
        return ("is only small words (a, of, the...), so it matches nearly every paper: add "
                "the subject's own words")
    return None


def topic_warnings(subscribers: Sequence[Subscriber],
                   feeds: Mapping[str, Sequence[Paper] | Feed], *,
                   what: str = "the recent feeds") -> list[str]:
    """One line per topic with no words of its own, or that matched nothing in `feeds`, or
    more than half of every one of them; each topic is judged once, however many subscribers
    follow it."""
    users: dict[str, list[str]] = {}
    for sub in subscribers:
        for t in sub.topics:
            users.setdefault(t, []).append(sub.email)

    def whom(topic: str) -> str:
        who = users[topic]
        return who[0] if len(who) == 1 else f"{who[0]} and {len(who) - 1} more"

    lines = []
    for topic in users:
        problem = wordless(topic)
        if problem:
            lines.append(f"warning: topic {topic!r} ({whom(topic)}) {problem}")
    judged = [t for t in users if wordless(t) is None]
    if not any(len(f) for f in feeds.values()) or not judged:
        return _capped(lines)
    groups = subscribers[0].aliases if subscribers else ()
    for s in topic_stats(judged, feeds, groups):
        if s.matched == 0:
            lines.append(f"warning: topic {s.topic!r} ({whom(s.topic)}) matched none of the "
                         f"{s.papers} papers in {what}: check its spelling, or try a broader "
                         "word")
        elif s.shares and min(s.shares) > BROAD_SHARE:
            lines.append(f"warning: topic {s.topic!r} ({whom(s.topic)}) matched "
                         f"{min(s.shares):.0%} or more of every feed in {what}: it filters "
                         "little; a narrower phrase helps")
    return _capped(lines)


def _capped(lines: list[str]) -> list[str]:
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"warning: ... and {len(lines) - MAX_LINES} more topic "
                                     "warning(s)"]
    return lines


def topic_advice(config: Config, subscribers: Sequence[Subscriber] | None = None,
                 current: Sequence[Paper] = ()) -> list[str]:
    """Warnings about topics that matched nothing in the last feeds the ledger knows (and the
    current feed, when given), or more than half of every one of them."""
    from digest_mailer.store import Ledger  # only this function reads the ledger

    with Ledger.open_readonly(config.state_target) as ledger:
        feeds: dict[str, Sequence[Paper]] = dict(ledger.recent_titles(LEDGER_FEEDS))
    what = f"the titles of the last {len(feeds)} feed(s) in the ledger"
    if current:
        what = "the current feed" + (" and " + what if feeds else "")
        feeds["current"] = current
    subs = config.subscribers_view() if subscribers is None else subscribers
    return topic_warnings(subs, feeds, what=what)
