"""Moves each message through the outbox and a backend: pending -> sending -> sent, or deferred
(retried with backoff, then left for the next run) or failed (counted toward suppression)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

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


@dataclass
class Dispatcher:
    ledger: Ledger
    backend: Backend
    run_id: int | None
    clock: Callable[[], datetime]
    wait: Callable[[float], bool]  # sleeps; True when the run was asked to stop meanwhile
    policy: Policy = field(default_factory=Policy)
    stopped: str | None = None  # set when the backend itself failed: stop the run
    _deferred: list[tuple[int, OutgoingMessage, int]] = field(default_factory=list)

    @property
    def record(self) -> bool:
        return not self.ledger.readonly

    def send(self, message: OutgoingMessage, included: Sequence[str],
             offered: Sequence[str]) -> SubscriberOutcome:
        """One new message. In a dry run it only goes to the backend."""
        if not self.record:
            return self._attempt(None, message, len(included))
        entry = self.ledger.outbox.add(message, run_id=self.run_id, included=included,
                                       offered=offered, now=self.clock())
        return self._attempt(entry, message, len(included))

    def leftovers(self, rebuild: Callable[[Entry], OutgoingMessage | None]
                  ) -> list[SubscriberOutcome]:
        """Messages an earlier run left pending, in flight or deferred: rebuilt from their
        stored template and sent again under the same Message-ID, before anything new."""
        outcomes = []
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
            outcome = self._attempt(entry.id, message, len(entry.included))
            outcomes.append(replace(outcome, detail=f"{outcome.detail} (left by an earlier "
                                                    f"run, {entry.state} then)"))
        return outcomes

    def retry_deferred(self) -> list[SubscriberOutcome]:
        """This run's deferred messages, retried with a growing delay; what is still deferred
        after the last try stays in the outbox for the next run."""
        outcomes: list[SubscriberOutcome] = []
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
                outcomes.append(self._attempt(entry, message, papers))
            delay = min(delay * 2, self.policy.max_delay)
        return outcomes

    def _attempt(self, entry: int | None, message: OutgoingMessage,
                 papers: int) -> SubscriberOutcome:
        outbox = self.ledger.outbox
        if entry is not None:
            outbox.sending(entry, self.clock())
        try:
            receipt = self.backend.send(message)
        except DeliveryError as e:
            return self._failed(entry, message, papers, e)
        if entry is not None:
            outbox.sent(entry, self.clock(), self.run_id)
        return SubscriberOutcome(
            message.recipient, Status.WRITTEN if self.backend.dry_run else Status.SENT, papers,
            detail=f"{papers} paper(s)", message_id=message.message_id,
            location=receipt.location)

    def _failed(self, entry: int | None, message: OutgoingMessage, papers: int,
                e: DeliveryError) -> SubscriberOutcome:
        outbox = self.ledger.outbox
        now = self.clock()
        if e.fatal:
            self.stopped = e.message
            if entry is not None:
                outbox.deferred(entry, now, e.message)
            return SubscriberOutcome(message.recipient, Status.FAILED, papers, e.message,
                                     message_id=message.message_id)
        if not e.permanent:
            if entry is not None:
                outbox.deferred(entry, now, e.message)
                self._deferred.append((entry, message, papers))
            return SubscriberOutcome(message.recipient, Status.DEFERRED, papers, e.message,
                                     message_id=message.message_id)
        if entry is not None:
            outbox.failed(entry, now, e.message)
            failures = outbox.hard_failures(message.recipient)
            if failures >= self.policy.max_hard_failures and self.ledger.suppress(
                    message.recipient, "bounced", now, e.message):
                logger.warning("%s: suppressed after %d hard failures", message.recipient,
                               failures)
        return SubscriberOutcome(message.recipient, Status.FAILED, papers, e.message,
                                 message_id=message.message_id)
