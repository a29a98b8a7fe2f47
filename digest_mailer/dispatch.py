"""Moves each message through the outbox and a backend: pending -> sending -> sent, or deferred
(retried with backoff, then left for the next run) or failed (counted toward suppression).

With `senders` > 0 the sending happens in that many forked processes, one SMTP connection each,
while the run's own process goes on building the next messages: on two cores, building and
sending overlap instead of taking turns. A sender records each message's fate in the ledger
itself, the moment it is known, exactly as the run's own process does when `senders` is 0."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from digest_mailer.delivery import Backend
from digest_mailer.errors import DeliveryError
from digest_mailer.models import OutgoingMessage, Status, SubscriberOutcome
from digest_mailer.store import Ledger
from digest_mailer.store.outbox import Entry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Policy:
    retry_attempts: int = 3  # further tries of a deferred message within one run
    retry_delay: float = 30.0  # before the first retry; doubles, capped at max_delay
    max_delay: float = 600.0
    max_hard_failures: int = 3  # permanent refusals in a row before the address is suppressed


class Fate(Enum):
    DONE = "done"
    DEFERRED = "deferred"
    FATAL = "fatal"  # the backend itself failed: the run stops


def attempt(ledger: Ledger, backend: Backend, policy: Policy, run_id: int | None,
            entry: int | None, message: OutgoingMessage, papers: int,
            clock: Callable[[], datetime]) -> tuple[SubscriberOutcome, Fate]:
    """One try of one message, its fate committed to the outbox before and after."""
    outbox = ledger.outbox
    if entry is not None:
        outbox.sending(entry, clock())
    try:
        receipt = backend.send(message)
    except DeliveryError as e:
        failed = SubscriberOutcome(message.recipient, Status.FAILED, papers, e.message,
                                   message_id=message.message_id)
        if e.fatal:
            if entry is not None:
                outbox.deferred(entry, clock(), e.message)
            return failed, Fate.FATAL
        if not e.permanent:
            if entry is not None:
                outbox.deferred(entry, clock(), e.message)
            return replace(failed, status=Status.DEFERRED), Fate.DEFERRED
        if entry is not None:
            outbox.failed(entry, clock(), e.message)
            failures = outbox.hard_failures(message.recipient)
            if failures >= policy.max_hard_failures and ledger.suppress(
                    message.recipient, "bounced", clock(), e.message):
                logger.warning("%s: suppressed after %d hard failures", message.recipient,
                               failures)
        return failed, Fate.DONE
    if entry is not None:
        outbox.sent(entry, clock(), run_id)
    return SubscriberOutcome(
        message.recipient, Status.WRITTEN if backend.dry_run else Status.SENT, papers,
        detail=f"{papers} paper(s)", message_id=message.message_id,
        location=receipt.location), Fate.DONE


@dataclass
class Dispatcher:
    """Sends what the run builds. `send` and `leftovers` hand messages over; an outcome comes
    back from them at once when sending happens here, or later from `poll` and `finish` when
    sender processes do it. A message's last outcome is its final one."""

    ledger: Ledger
    backend: Backend
    run_id: int | None
    clock: Callable[[], datetime]
    wait: Callable[[float], bool]  # sleeps; True when the run was asked to stop meanwhile
    policy: Policy = field(default_factory=Policy)
    senders: int = 0
    open_backend: Callable[[], Backend] | None = None  # a sender process's own backend
    stopped: str | None = None  # set when the backend itself failed: stop the run
    _deferred: list[tuple[int, OutgoingMessage, int]] = field(default_factory=list)
    _pool: _Pool | None = None

    @property
    def record(self) -> bool:
        return not self.ledger.readonly

    def _parallel(self) -> _Pool | None:
        if self.senders <= 0 or not self.record or self.open_backend is None:
            return None
        if self._pool is None:
            self._pool = _Pool(self)
        return self._pool

    def send(self, message: OutgoingMessage, included: Sequence[str],
             offered: Sequence[str]) -> SubscriberOutcome | None:
        """One new message; in a dry run it only goes to the backend. A sender process puts
        it in the outbox itself, so one process writes while the run builds: were the run
        killed before that, the message was never recorded, and its papers were never
        offered, so the next run builds it again."""
        pool = self._parallel()
        if pool is not None:
            pool.put(None, message, len(included), (tuple(included), tuple(offered)))
            return None
        entry = None
        if self.record:
            entry = self.ledger.outbox.add(message, run_id=self.run_id, included=included,
                                           offered=offered, now=self.clock())
        return self._hand_over(entry, message, len(included))

    def _hand_over(self, entry: int | None, message: OutgoingMessage,
                   papers: int) -> SubscriberOutcome | None:
        pool = self._parallel()
        if pool is not None and entry is not None:
            pool.put(entry, message, papers, None)
            return None
        outcome, fate = attempt(self.ledger, self.backend, self.policy, self.run_id, entry,
                                message, papers, self.clock)
        self._settle(entry, message, papers, fate, outcome)
        return outcome

    def _settle(self, entry: int | None, message: OutgoingMessage, papers: int, fate: Fate,
                outcome: SubscriberOutcome) -> None:
        if fate is Fate.FATAL and not self.stopped:
            self.stopped = outcome.detail
        elif fate is Fate.DEFERRED and entry is not None:
            self._deferred.append((entry, message, papers))

    def poll(self) -> list[SubscriberOutcome]:
        return self._pool.results(block=False) if self._pool else []

    def leftovers(self, rebuild: Callable[[Entry], OutgoingMessage | None]
                  ) -> list[tuple[str, SubscriberOutcome | None]]:
        """Messages an earlier run left pending, in flight or deferred: rebuilt from their
        stored template and sent again under the same Message-ID, before anything new. Each
        comes back as its Message-ID and its outcome when that is already known."""
        handed: list[tuple[str, SubscriberOutcome | None]] = []
        for entry in self.ledger.outbox.open_entries():
            if self.stopped:
                break
            why = self.ledger.suppressed(entry.recipient)
            if why:
                self.ledger.outbox.failed(entry.id, self.clock(), f"suppressed ({why})")
                continue
            message = rebuild(entry)
            if message is None:
                self.ledger.outbox.failed(entry.id, self.clock(), "its template is gone")
                continue
            handed.append((message.message_id,
                           self._hand_over(entry.id, message, len(entry.included))))
        return handed

    def finish(self) -> list[SubscriberOutcome]:
        """Waits for every message handed over, retries the deferred ones with a growing delay
        (what is still deferred after the last try stays in the outbox for the next run), and
        releases the senders."""
        outcomes: list[SubscriberOutcome] = []
        if self._pool:
            outcomes += self._pool.drain()
        delay = self.policy.retry_delay
        for _ in range(self.policy.retry_attempts):
            if not self._deferred or self.stopped:
                break
            batch, self._deferred = self._deferred, []
            logger.info("retrying %d deferred message(s) in %.0fs", len(batch), delay)
            if self.wait(delay):
                self._deferred = batch
                break
            for entry, message, papers in batch:
                outcome = self._hand_over(entry, message, papers)
                if outcome is not None:
                    outcomes.append(outcome)
            if self._pool:
                outcomes += self._pool.drain()
            delay = min(delay * 2, self.policy.max_delay)
        if self._pool:
            self._pool.close()
        return outcomes


class _Pool:
    """Forked sender processes fed through a bounded queue. Forked, so each holds the run lock
    with the run: a run killed with SIGKILL leaves no sender that a new run could race."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        ctx = multiprocessing.get_context("fork")
        # Deep enough that rendering a new digest in the run does not starve the senders.
        self._work: Any = ctx.Queue(maxsize=64 * dispatcher.senders)
        self._done: Any = ctx.Queue()
        self._in_flight: dict[str, tuple[OutgoingMessage, int]] = {}
        parent = os.getpid()
        self._procs = [ctx.Process(target=_sender, daemon=True, name=f"sender-{n}",
                                   args=(dispatcher, self._work, self._done, parent))
                       for n in range(dispatcher.senders)]
        for proc in self._procs:
            proc.start()

    def put(self, entry: int | None, message: OutgoingMessage, papers: int,
            new: tuple[tuple[str, ...], tuple[str, ...]] | None) -> None:
        """`entry` is the outbox row of a message already there; a new one comes with its
        (included, offered) papers for the sender to record."""
        self._in_flight[message.message_id] = (message, papers)
        while True:
            try:
                self._work.put((entry, message, papers, new), timeout=0.5)
                return
            except queue.Full:
                if not any(p.is_alive() for p in self._procs):
                    raise RuntimeError("every sender process died") from None

    def results(self, block: bool) -> list[SubscriberOutcome]:
        out = []
        while self._in_flight:
            try:
                entry, outcome, fate = self._done.get(timeout=0.5) if block else \
                    self._done.get_nowait()
            except queue.Empty:
                if not block:
                    break
                if not any(p.is_alive() for p in self._procs):
                    raise RuntimeError("every sender process died") from None
                continue
            message, papers = self._in_flight.pop(outcome.message_id)
            self._d._settle(entry, message, papers, fate, outcome)
            out.append(outcome)
        return out

    def drain(self) -> list[SubscriberOutcome]:
        return self.results(block=True)

    def close(self) -> None:
        for _ in self._procs:
            self._work.put(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def _sender(d: Dispatcher, work: Any, done: Any, parent: int) -> None:
    """A sender process: its own ledger connection (a forked one must not be used) and its
    own backend. After a fatal error it sends nothing more: what is queued stays pending in
    the outbox for the next run."""
    assert d.open_backend is not None
    fatal = None
    ledger = Ledger.open(Path(d.ledger.path))
    backend = d.open_backend()
    try:
        while True:
            try:
                item = work.get(timeout=0.5)
            except queue.Empty:
                item = ...
            # A run killed with SIGKILL cannot tell its senders: they notice and stop, so
            # nothing outlives the run (nor holds its lock).
            if os.getppid() != parent or item is None:
                break
            if item is ...:
                continue
            entry, message, papers, new = item
            if entry is None and new is not None:
                entry = ledger.outbox.add(message, run_id=d.run_id, included=new[0],
                                          offered=new[1], now=d.clock())
            if fatal:
                done.put((entry, SubscriberOutcome(message.recipient, Status.NOT_ATTEMPTED,
                                                   papers, fatal,
                                                   message_id=message.message_id), Fate.DONE))
                continue
            outcome, fate = attempt(ledger, backend, d.policy, d.run_id, entry, message,
                                    papers, d.clock)
            if fate is Fate.FATAL:
                fatal = outcome.detail
            done.put((entry, outcome, fate))
    finally:
        backend.close()
        ledger.close()
