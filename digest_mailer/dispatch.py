"""Senders: they take the outbox's rows a few at a time, check that each address may still be
mailed, build the message from its stored digest, send it, and record its fate in one small
commit. Nothing travels between the run and its senders but what the ledger holds.

A sender is a thread of the run (`connections = 0`) or a process started with `spawn` (never
forked: the run has threads). A sender process holds a shared lock beside the ledger while it
lives, which a new run must take exclusively before it starts, and it stops by itself when the
run's process is gone: no sender outlives its run, and no two runs send at once."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from digest_mailer.delivery import Backend, BackendOptions, open_backend
from digest_mailer.errors import DeliveryError, StoreError
from digest_mailer.lease import LeaseKeeper, LocalControl
from digest_mailer.message import DkimSigner, MessageTemplate
from digest_mailer.models import OutgoingMessage
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.ledger import RunControl
from digest_mailer.store.outbox import Entry
from digest_mailer.truth import Roster, Truth

logger = logging.getLogger(__name__)

CLAIM = 32  # rows a sender takes at a time (of one digest): one claim commit for many
IDLE = 0.01  # seconds between looks at an empty queue while the run still composes
WORKER_IDLE = 0.25  # the same for a `send` worker, which may wait for hours
CONTROL_EVERY = 0.05  # seconds between looks at the run's state while all goes well


@dataclass(frozen=True, slots=True)
class Policy:
    retry_attempts: int = 3  # further tries of a deferred message within one run
    retry_delay: float = 30.0  # before the first retry; doubles, capped at max_delay
    max_delay: float = 600.0
    max_hard_failures: int = 3  # permanent refusals in a row before the address is suppressed

    def delays(self) -> list[float]:
        return [min(self.retry_delay * 2 ** n, self.max_delay)
                for n in range(self.retry_attempts)]


@dataclass(frozen=True, slots=True)
class SenderSpec:
    """Everything a sender needs, picklable: paths and values, nothing live."""

    ledger: str
    run_id: int
    backend: str
    options: BackendOptions
    policy: Policy
    signer: DkimSigner | None
    roster: Roster
    timeout: float  # the backend's deadline for one message
    log_level: int = logging.WARNING
    store: StoreTarget | None = None  # where the ledger lives (default: the file `ledger`)
    lease: float = 60.0  # seconds a claim holds its rows unless renewed (lease.py)
    worker: bool = False  # a `send` worker: any run's rows, its own server-trouble count,
    # no senders lock (runs may start while it works), a calmer look at an empty queue


class Flag(Protocol):
    def is_set(self) -> bool: ...

    def set(self) -> None: ...


def now_utc() -> datetime:
    return datetime.now(UTC)


class _Templates:
    """Digest templates by set, rebuilt from the outbox; a few kept, since rows come grouped."""

    def __init__(self, ledger: Ledger, signer: DkimSigner | None, keep: int = 32) -> None:
        self._ledger, self._signer, self._keep = ledger, signer, keep
        self._cache: OrderedDict[int, MessageTemplate] = OrderedDict()

    def message(self, entry: Entry, want_html: bool) -> OutgoingMessage:
        if entry.set_id is None:
            raise ValueError("it has no stored digest")
        template = self._cache.get(entry.set_id)
        if template is None:
            data = self._ledger.outbox.load_set(entry.set_id)
            if data is None:
                raise ValueError("its stored digest is gone")
            template = MessageTemplate.from_compiled(data, set_id=entry.set_id,
                                                     signer=self._signer)
            self._cache[entry.set_id] = template
            if len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(entry.set_id)
        return template.personalize(email=entry.recipient, name=entry.name,
                                    unsubscribe_url=entry.unsubscribe_url, token=entry.token,
                                    message_id=entry.message_id, want_html=want_html)


_STOP, _IDLE = "stop", "idle"


def _step(step: Callable[..., object], *args: object) -> BaseException | None:
    """One step of a message through the backend; what went wrong is its fate, recorded like
    a refusal (anything unexpected fails that message alone)."""
    try:
        step(*args)
    except Exception as e:
        return e
    return None


@dataclass
class _Flight:
    """A message on the wire, or one that failed before it got there (`error`)."""

    entry: Entry
    message: OutgoingMessage
    error: BaseException | None = None


class Sender:
    """One sender's loop over the queue, in one thread: while the server takes a message, the
    sender commits the fate of the one before and checks and builds the next. (A thread for
    the connection and one for the commits cost more than they saved: each hand-over between
    threads waits for the GIL, which the sampling profiler showed as 16% of the sender's
    time in ThreadPoolExecutor.submit alone.)

    The crash promise: a message's content goes on the wire only once the fate of the one
    before it is committed, so at any moment at most the message on the wire is accepted and
    unrecorded; it is resent under its own Message-ID after a crash."""

    def __init__(self, spec: SenderSpec, name: str, stop: Flag, composed: Flag,
                 parent_alive: Callable[[], bool] = lambda: True) -> None:
        self.spec, self.name = spec, name
        self._stop, self._composed, self._parent_alive = stop, composed, parent_alive
        self._hand: list[Entry] = []
        self._trouble = 0
        self._control: RunControl | None = None
        self._looked = 0.0
        self._parent_seen = 0.0  # when the run's process was last seen alive
        self._ctl: Any = None  # the ledger (the run's control row) or a worker's LocalControl
        self._keeper: LeaseKeeper | None = None
        self.blocked: str | None = None  # why it stopped, when the server cannot be used
        self._store_failure: StoreError | None = None  # raised once the wire is clear

    def run(self) -> None:
        spec = self.spec
        where = spec.store or StoreTarget.sqlite(spec.ledger)
        ledger = Ledger.open(where)
        self._ctl = LocalControl() if spec.worker else ledger
        backend = open_backend(spec.backend, spec.options)
        self._keeper = LeaseKeeper(where, self.name, spec.lease)
        try:
            self._loop(ledger, backend, _Templates(ledger, spec.signer), Truth(spec.roster))
        finally:
            try:
                self._keeper.close()
                ledger.outbox.release([e.id for e in self._hand], by=self.name)
            finally:
                with contextlib.suppress(Exception):
                    backend.close()
                ledger.close()

    def _loop(self, ledger: Ledger, backend: Backend, templates: _Templates,
              truth: Truth) -> None:
        flight: _Flight | None = None
        while True:
            # The next message is checked and built while the server reads `flight`.
            step = self._take(ledger, backend, templates, truth, may_wait=flight is None)
            ready = step if isinstance(step, tuple) else None
            if flight is not None:
                error = flight.error or _step(backend.finish)
                # A server that cannot be used, or an error not the server's (which drops the
                # connection, see _record): the next message does not begin on it.
                trouble = error is not None and (not isinstance(error, DeliveryError) or
                                                 error.fatal or error.unavailable)
                landed, flight = flight, None
                # `ready` was checked before the wait for the verdict: a process frozen
                # meanwhile (SIGSTOP) may have lost it to another sender.
                if ready is not None and not trouble and self._holds():
                    flight = _Flight(*ready, _step(backend.begin, ready[1]))
                elif ready is not None:
                    self._hand.insert(0, ready[0])  # untried: back in hand
                # The last one's fate is committed while the server reads the next one's
                # envelope, and before its content goes: at any moment, at most the message
                # on the wire is accepted and unrecorded.
                self._record(landed, error, ledger, backend)
                if flight is not None and flight.error is None:
                    flight.error = _step(backend.transfer)
                continue
            if ready is not None:
                flight = _Flight(*ready, _step(backend.begin, ready[1]))
                if flight.error is None:
                    flight.error = _step(backend.transfer)
            elif step == _STOP:
                if self._store_failure is not None:
                    raise self._store_failure
                return

    def _holds(self) -> bool:
        """The rows in hand are surely still this sender's for the next message's deadline."""
        assert self._keeper is not None
        return self._keeper.holds(margin=min(self.spec.timeout, self.spec.lease / 2))

    def _going(self) -> bool:
        """Not asked to stop, and the run's process alive. That is looked at every
        CONTROL_EVERY seconds, not per message: each look is a poll of a pipe, which took a
        fifth of the sender thread's time (py-spy) at one look per message."""
        if self._stop.is_set():
            return False
        now = time.monotonic()
        if now - self._parent_seen > CONTROL_EVERY:
            if not self._parent_alive():
                return False
            self._parent_seen = now
        return True

    def _take(self, ledger: Ledger, backend: Backend, templates: _Templates, truth: Truth, *,
              may_wait: bool) -> tuple[Entry, OutgoingMessage] | str:
        """The next message to send, checked and built; or _STOP; or _IDLE when nothing is
        ready and `may_wait` is false (a message is on the wire to see to first)."""
        spec, outbox = self.spec, ledger.outbox
        while self._going() and self._store_failure is None:
            now = time.time()
            if self._control is None or self._trouble or now - self._looked > CONTROL_EVERY:
                self._control = self._ctl.run_control(spec.run_id)  # what others met
                self._looked = now
            control = self._control
            if control.blocked:
                self.blocked = control.cause or "the SMTP server cannot be used"
                return _STOP
            self._trouble = control.trouble
            if control.hold_until > now:
                if not may_wait:
                    return _IDLE
                time.sleep(min(control.hold_until - now, 0.2))
                continue
            run = None if spec.worker else spec.run_id
            if not self._hand:
                # Looked at before the claim: the composer commits its rows, then says it is
                # done. Looked at after an empty queue, the flag could come with rows the
                # claim did not see, and they would be left behind (CI, twice).
                composed = self._composed.is_set()
                self._hand = outbox.claim(run, self.name, CLAIM, now, lease=spec.lease)
                if self._hand and self._keeper is not None:
                    self._keeper.claimed(now)
                if not self._hand:
                    if not may_wait:
                        return _IDLE
                    left, due = outbox.due(run)
                    if composed and left == 0:
                        return _STOP
                    idle = WORKER_IDLE if spec.worker else IDLE
                    pause = idle if due is None or due <= now else min(due - now, idle)
                    time.sleep(max(pause, IDLE))
                    continue
            if not self._holds():
                # The lease could not be renewed for most of its length: the rows in hand
                # may be another sender's by now. Never send what may be on its wire.
                logger.warning("%s: the lease on %d message(s) may have run out; putting "
                               "back those still its own", self.name, len(self._hand))
                outbox.release([e.id for e in self._hand], by=self.name)
                self._hand = []
                time.sleep(IDLE)
                continue
            truth.refresh()  # a stat; the file is read again only when it changed
            entry = self._hand.pop(0)
            why = truth.forbidden(entry.recipient, ledger)
            if why:
                outbox.cancelled(entry.id, now_utc(), why)
                logger.info("%s: cancelled, %s", entry.recipient, why)
                continue
            try:
                return entry, templates.message(entry, want_html=backend.dry_run)
            except StoreError as e:
                if not outbox.sets_readable():
                    # The ledger itself fails (its server gone, say): not this message's
                    # fault, and a failed message is never tried again. The sender stops
                    # once the message on the wire has its verdict recorded; the rows in its
                    # hand wait for the next sender.
                    self._hand.insert(0, entry)
                    self._store_failure = e
                    return _STOP
                logger.error("%s: cannot read the message's digest: %s", entry.recipient, e)
                outbox.failed(entry.id, now_utc(), f"cannot read its digest: {e}",
                              attempt=False)  # this row's alone: the others go on
            except Exception as e:  # anything wrong with one message fails it alone
                logger.exception("%s: cannot build the message", entry.recipient)
                outbox.failed(entry.id, now_utc(), f"cannot build the message: "
                                                   f"{type(e).__name__}: {e}", attempt=False)
        return _STOP

    def _record(self, flight: _Flight, error: BaseException | None, ledger: Ledger,
                backend: Backend) -> None:
        entry, outbox = flight.entry, ledger.outbox
        if isinstance(error, DeliveryError):
            self._refused(entry, error, ledger)
        elif error is not None:  # not the server's doing: this message alone fails
            logger.error("%s: unexpected error while sending: %r", entry.recipient, error)
            drop = getattr(backend, "drop", None)
            if drop is not None:
                drop()
            outbox.failed(entry.id, now_utc(), f"unexpected error while sending: "
                                               f"{type(error).__name__}: {error}")
        else:
            outbox.sent(entry.id, now_utc(), None if self.spec.worker else self.spec.run_id,
                        subject=flight.message.subject, entry=entry)
            if self._trouble:
                self._ctl.server_fine(self.spec.run_id)
                self._trouble = 0
                self._control = None

    def _refused(self, entry: Entry, e: DeliveryError, ledger: Ledger) -> None:
        spec, outbox, policy = self.spec, ledger.outbox, self.spec.policy
        now = now_utc()
        if e.fatal or e.unavailable:
            self._control = None  # look again before the next message
            control = self._ctl.server_trouble(spec.run_id, e.message, time.time(),
                                               policy.delays(), fatal=e.fatal)
            logger.warning("%s%s", e.message, "; the run stops sending" if control.blocked
                           else f"; trying again in {control.hold_until - time.time():.0f}s")
            if e.tried:
                outbox.deferred(entry.id, now, e.message,
                                None if control.blocked else control.hold_until)
            else:
                outbox.release([entry.id], by=self.name)
            return
        if not e.permanent:
            tries = entry.tries + 1
            delays = policy.delays()
            next_try = time.time() + delays[tries - 1] if tries <= len(delays) else None
            outbox.deferred(entry.id, now, e.message, next_try)
            logger.info("%s: deferred (%s)", entry.recipient, e.message)
            return
        outbox.failed(entry.id, now, e.message, attempt=e.tried)
        if outbox.failed_in_a_row(entry.recipient, policy.max_hard_failures) and \
                ledger.suppress(entry.recipient, "bounced", now, e.message):
            logger.warning("%s: suppressed after %d hard failures in a row", entry.recipient,
                           policy.max_hard_failures)
