"""Help for writing topics: which ones found nothing in the recent feeds, and which ones match
so much of every feed that they filter nothing. Pure: the feeds are passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from digest_mailer import aliases as alias_table
from digest_mailer.models import Paper, Subscriber
from digest_mailer.select import Feed

BROAD_SHARE = 0.5  # a topic in more than half of every feed filters little
MIN_FEED = 5  # a day with fewer papers says nothing about a topic's share
MAX_LINES = 20


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: str
    matched: int  # papers matched over all the feeds
    papers: int
    shares: tuple[float, ...]  # per feed of MIN_FEED papers or more


def topic_stats(topics: Iterable[str], feeds: Mapping[str, Sequence[Paper]],
                groups: tuple[tuple[str, ...], ...] = ()) -> list[TopicStats]:
    """How often each topic matches, over all the feeds (day -> papers) and per feed."""
    prepared = {day: Feed.of(papers) for day, papers in feeds.items() if papers}
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


def topic_warnings(subscribers: Sequence[Subscriber], feeds: Mapping[str, Sequence[Paper]],
                   *, what: str = "the recent feeds") -> list[str]:
    """One line per topic that matched nothing in `feeds`, or more than half of every one of
    them; each topic is judged once, however many subscribers follow it."""
    if not any(feeds.values()):
        return []
    users: dict[str, list[str]] = {}
    for sub in subscribers:
        for t in sub.topics:
            users.setdefault(t, []).append(sub.email)
    groups = subscribers[0].aliases if subscribers else ()
    lines = []
    for s in topic_stats(users, feeds, groups):
        who = users[s.topic]
        whom = who[0] if len(who) == 1 else f"{who[0]} and {len(who) - 1} more"
        if s.matched == 0:
            lines.append(f"warning: topic {s.topic!r} ({whom}) matched none of the {s.papers} "
                         f"papers in {what}: check its spelling, or try a broader word")
        elif s.shares and min(s.shares) > BROAD_SHARE:
            lines.append(f"warning: topic {s.topic!r} ({whom}) matched {min(s.shares):.0%} or "
                         f"more of every feed in {what}: it filters little; a narrower "
                         "phrase helps")
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"warning: ... and {len(lines) - MAX_LINES} more topic "
                                     "warning(s)"]
    return lines
