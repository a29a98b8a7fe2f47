"""Who the newsletter goes to: the config's [[subscribers]] and the store's self-service ones,
merged by one rule.

The rule for an address in both: the config is the operator's word on *whether* and *as whom*
(name, min_upvotes, max_papers, and a `pause = true` there always holds); the subscriber's own
word, stored as their override when they save their preferences, decides *what* they receive
(topics, exclusions, authors, cadence) and may pause them too. Removing the address from the
config ends it: an override without its config entry mails nobody (the operator removed them).
`subscribers remove --store EMAIL` drops an override, so the config's values apply again."""

from __future__ import annotations

from dataclasses import dataclass, replace

from digest_mailer.config import Config
from digest_mailer.models import Subscriber
from digest_mailer.store.selfservice import SelfService, StoredSubscriber, peek
from digest_mailer.store_target import StoreTarget


@dataclass(frozen=True, slots=True)
class Member:
    subscriber: Subscriber
    source: str  # 'config' | 'config+override' | 'store'
    origin: str = ""  # for the store's rows: signup, import, cli, web
    stored: StoredSubscriber | None = None


def from_store(s: StoredSubscriber, config: Config) -> Subscriber:
    return Subscriber(email=s.email, name=s.name, topics=s.topics, exclude=s.exclude,
                      authors=s.authors, min_upvotes=s.min_upvotes,
                      max_papers=s.max_papers or config.newsletter.max_papers,
                      frequency=s.frequency, weekday=s.weekday, paused=s.paused,
                      aliases=tuple((k, *v) for k, v in config.aliases.items()))


def overridden(sub: Subscriber, o: StoredSubscriber) -> Subscriber:
    return replace(sub, topics=o.topics, exclude=o.exclude, authors=o.authors,
                   frequency=o.frequency, weekday=o.weekday, paused=sub.paused or o.paused)


def merge(config: Config, stored: list[StoredSubscriber]) -> list[Member]:
    """Config subscribers in the config's order (with their overrides), then the store's."""
    by_key = {s.key: s for s in stored}
    out: list[Member] = []
    in_config: set[str] = set()
    for sub in config.subscribers_view():
        in_config.add(sub.key)
        o = by_key.get(sub.key)
        if o is None:
            out.append(Member(sub, "config"))
        else:
            out.append(Member(overridden(sub, o), "config+override", o.origin, o))
    for s in stored:
        if s.key not in in_config and s.kind == "store":
            out.append(Member(from_store(s, config), "store", s.origin, s))
    return out


def stored(where: StoreTarget) -> list[StoredSubscriber]:
    """The store's rows; none before the ledger or its tables exist."""
    return peek(where, SelfService.all, [])


def members(config: Config) -> list[Member]:
    return merge(config, stored(config.state_target))


def everyone(config: Config) -> tuple[Subscriber, ...]:
    """Every subscriber a run considers, config and store alike."""
    return tuple(m.subscriber for m in members(config))


def store_revision(where: StoreTarget) -> int:
    """The store's revision (0 before it exists): it moves with every change of a
    self-service subscriber, so a watcher rereads them only then."""
    return peek(where, SelfService.revision, 0)
