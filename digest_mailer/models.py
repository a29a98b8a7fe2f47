"""The typed, frozen values that flow between the stages of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper, whatever source it came from. Every text field is untrusted feed data."""

    id: str  # canonical arXiv id, version stripped
    title: str
    abstract: str = ""
    authors: tuple[str, ...] = ()
    published_at: datetime | None = None
    listed_on: date | None = None  # the day it appeared on the daily list
    upvotes: int = 0
    organization: str | None = None
    github_url: str | None = None
    project_url: str | None = None
    ai_summary: str | None = None
    ai_keywords: tuple[str, ...] = ()
    num_comments: int = 0
    github_stars: int = 0

    @property
    def hf_url(self) -> str:
        return f"https://huggingface.co/papers/{self.id}"

    @property
    def discussion_url(self) -> str:
        return f"https://huggingface.co/papers/{self.id}#community"

    @property
    def arxiv_url(self) -> str:
        return f"https://arxiv.org/abs/{self.id}"

    @property
    def pdf_url(self) -> str:
        return f"https://arxiv.org/pdf/{self.id}"

    @property
    def sort_date(self) -> datetime | date | None:
        return self.listed_on or self.published_at


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What a source yielded: papers deduplicated by id, and what was skipped and why."""

    papers: tuple[Paper, ...]
    skipped: int = 0
    skipped_reasons: tuple[str, ...] = ()
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Subscriber:
    email: str
    name: str = ""
    topics: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    min_upvotes: int = 0
    max_papers: int = 20
    frequency: str = "daily"  # or "weekly"
    weekday: int = 0  # Monday; the day a weekly subscriber is due
    paused: bool = False
    # The operator's [aliases] table (name, other names...), the same for every subscriber.
    aliases: tuple[tuple[str, ...], ...] = ()

    def due_on(self, day: date) -> bool:
        return self.frequency != "weekly" or day.weekday() == self.weekday

    @property
    def key(self) -> str:
        """The ledger's key for this subscriber: addresses compare case-insensitively."""
        return self.email.lower()


class ReasonKind(StrEnum):
    TOPIC = "topic"
    AUTHOR = "author"
    EVERYTHING = "everything"


WHERE = {"title": "in the title", "keywords": "in the keywords",
         "abstract": "mentioned in the abstract"}


@dataclass(frozen=True, slots=True)
class MatchReason:
    kind: ReasonKind
    term: str = ""
    fields: tuple[str, ...] = ()  # every field it matched in, best first
    snippet: tuple[str, ...] = ()  # (before, the matched words, after), from the best field
    via: str = ""  # the alias it matched through, when not the term itself
    stemmed: bool = False  # matched another form of the word ("robots" for `robotics`)
    mentions: int = 0  # in the abstract
    words: str = ""  # what matched, as written in the best field

    @property
    def where(self) -> str:
        return WHERE.get(self.fields[0], "") if self.fields else ""

    @property
    def matched(self) -> str:
        return self.words

    def describe(self) -> str:
        if self.kind is ReasonKind.AUTHOR:
            return f"author {self.term}"
        if self.kind is ReasonKind.EVERYTHING:
            return "all papers"
        if not self.fields:
            return self.term
        how = ""
        if self.via:
            how = f", through the alias {self.via!r}"
        elif self.stemmed:
            how = f", as {self.matched!r} by stem"
        return f"{self.term} ({', '.join(self.fields)}{how})"


@dataclass(frozen=True, slots=True)
class Match:
    paper: Paper
    reasons: tuple[MatchReason, ...]
    score: int = 0  # how well it matches: see select.py

    @property
    def why(self) -> str:
        return "; ".join(r.describe() for r in self.reasons)


@dataclass(frozen=True, slots=True)
class Selection:
    """One subscriber's share of the feed.

    `matches` is what goes into the email (ranked, capped); `offered` is every paper that was a
    candidate for it, past the cap included, so that none of them is offered again.
    """

    subscriber: Subscriber
    matches: tuple[Match, ...]
    offered: tuple[str, ...]
    matched_total: int  # matching papers in the feed, offered before or not
    already_offered: int

    @property
    def over_cap(self) -> int:
        return len(self.offered) - len(self.matches)


@dataclass(frozen=True, slots=True)
class Digest:
    """Everything one email shows."""

    newsletter: str
    run_date: date
    subscriber: Subscriber
    matches: tuple[Match, ...]
    over_cap: int
    unsubscribe_url: str


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    subject: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One serialised email (CRLF line ends) ready for a backend."""

    recipient: str
    envelope_from: str
    message_id: str
    subject: str
    data: bytes
    html: str
    run_date: date
    # What rebuilds it from its digest template after a crash (the outbox keeps these).
    set_id: int | None = None
    name: str = ""
    unsubscribe_url: str = ""
    token: str = ""
    crlf: bool = False  # known CRLF throughout by its builder: the backend need not scan it


class Status(StrEnum):
    SENT = "sent"
    WRITTEN = "written"  # by the file backend (a preview)
    NOTHING_NEW = "nothing new"
    PAUSED = "paused"
    NOT_DUE = "not due"  # a weekly subscriber on another day
    NO_MATCH = "no match"
    DEFERRED = "deferred"  # a temporary refusal: the next run sends it
    SUPPRESSED = "suppressed"  # unsubscribed, or bounced too often
    FAILED = "failed"
    NOT_ATTEMPTED = "not attempted"
    PENDING = "pending"  # in the outbox, not tried: the next run sends it
    CANCELLED = "cancelled"  # removed, paused or unsubscribed by the time it was to be sent


class MessageState(StrEnum):
    """An outbox row's state: the one list the store, the report, `status` and `history` read."""

    PENDING = "pending"  # composed, waits for a sender
    SENDING = "sending"  # claimed by a sender (on the wire, or next in its hand)
    SENT = "sent"
    DEFERRED = "deferred"  # a temporary refusal: retried in the run, then by the next run
    FAILED = "failed"  # refused for good, or could not be built
    CANCELLED = "cancelled"  # the address may no longer be mailed (checked at send time)

    @property
    def open(self) -> bool:
        return self in (MessageState.PENDING, MessageState.SENDING, MessageState.DEFERRED)


class RunState(StrEnum):
    """How a run ended (or that it has not)."""

    RUNNING = "running"
    OK = "ok"
    FAILURES = "failures"  # some subscriber due an email did not get it
    STOPPED = "stopped"  # asked to stop (SIGTERM/SIGINT): the rest waits in the outbox
    BLOCKED = "blocked"  # the server could not be used (down, login, TLS): the rest waits
    SOURCE_FAILED = "source failed"
    CRASHED = "crashed"  # an unexpected error in the run itself
    INTERRUPTED = "interrupted"  # its process died (SIGKILL, power): seen afterwards


@dataclass(frozen=True, slots=True)
class SubscriberOutcome:
    email: str
    status: Status
    papers: int = 0
    detail: str = ""
    message_id: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class RunReport:
    run_date: date
    started_at: datetime
    finished_at: datetime
    origin: str
    fetched: int
    skipped: int
    skipped_reasons: tuple[str, ...]
    outcomes: tuple[SubscriberOutcome, ...] = field(default_factory=tuple)
    dry_run: bool = False
    run_id: int | None = None
    stopped: str | None = None  # why the run stopped early, when it did
    state: RunState = RunState.OK

    def count(self, *statuses: Status) -> int:
        return sum(1 for o in self.outcomes if o.status in statuses)

    @property
    def delivered(self) -> int:
        return self.count(Status.SENT, Status.WRITTEN)

    @property
    def failed(self) -> int:
        """Subscribers due an email who did not get it in this run."""
        return self.count(Status.FAILED, Status.NOT_ATTEMPTED, Status.DEFERRED, Status.PENDING)
