"""The run's senders, started, watched and stopped: threads, or processes started with `spawn`
(never forked: the run has threads). A sender process of a run holds a shared lock beside the
ledger while it lives, which a new run must take exclusively before it starts, and stops by
itself when the run's process is gone: no sender outlives its run, and no two runs send at
once. A `send` worker's senders (worker.py) take no such lock."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from digest_mailer.dispatch import Sender, SenderSpec
from digest_mailer.errors import DeliveryError, DigestMailerError, StoreError
from digest_mailer.heap import settle
from digest_mailer.lock import senders_lock_path
from digest_mailer.store import Ledger

logger = logging.getLogger(__name__)


def _process_main(spec: SenderSpec, name: str, stop: Any, composed: Any,
                  begin: Any = None) -> None:
    """A sender process. It holds the senders lock while it lives, stops when the run's
    process is gone, and treats SIGTERM and SIGINT as "finish the message on the wire".
    `begin`: the end of a pipe that brings its run's number and its name, for a sender started
    before its run had them (it imports meanwhile)."""
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=spec.log_level, format="%(levelname)s: %(message)s")
    parent = multiprocessing.parent_process()
    with contextlib.ExitStack() as held:
        if not spec.worker:
            lock = held.enter_context(open(senders_lock_path(spec.ledger), "a"))
            fcntl.flock(lock, fcntl.LOCK_SH)
        if parent is None or not parent.is_alive():
            return
        if begin is not None:
            while not begin.poll(0.05):
                if stop.is_set() or not parent.is_alive():
                    return
            try:
                run_id, name = begin.recv()
            except (EOFError, OSError):
                return
            spec = replace(spec, run_id=run_id)
        sender = Sender(spec, name, stop, composed, parent.is_alive)
        settle()  # its modules and roster stay until it exits
        try:
            sender.run()
        except DigestMailerError as e:
            logger.error("%s: %s", name, e)
            raise SystemExit(1) from e
        if spec.worker and sender.blocked:
            logger.error("%s: stopped: %s", name, sender.blocked)
            raise SystemExit(1)
    # Done, and what it used is closed: no interpreter teardown, which the run's end waited
    # for (some 50 ms of freeing the modules and caches of a process about to vanish).
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):  # None, or closed, when the run's was (a daemon)
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    os._exit(0)


def sender_tag(spec: SenderSpec) -> str:
    """How this process's senders name themselves in the outbox's `claimed_by`: host and pid
    first (lease.holder_dead reads them), then the run, or `w` for a `send` worker."""
    return f"{socket.gethostname()}:{os.getpid()}:{'w' if spec.worker else spec.run_id}:"


@dataclass
class _Worker:
    name: str
    handle: Any  # a Process or a Thread
    settled: bool = False
    error: BaseException | None = None  # what ended a thread, or kept a process from starting

    @property
    def exitcode(self) -> int | None:
        if isinstance(self.handle, threading.Thread):
            return None if self.handle.is_alive() else 1 if self.error else 0
        if self.error is not None:
            return 1
        return self.handle.exitcode  # type: ignore[no-any-return]  # None until started


class Senders:
    """The run's senders: started, watched, stopped. `count` 0 is one thread in this process.
    `early`: processes started before the run has its number, so that they import while the
    run opens the ledger and reads the feed (a third of a second before the first message);
    they wait for `begin`. A run that ends before it begins them stops them."""

    def __init__(self, spec: SenderSpec, count: int, *, early: bool = False) -> None:
        self.spec = spec
        self._begin: list[Any] = []  # the run's ends of the early senders' pipes
        self.died: list[str] = []
        self._errors: list[BaseException] = []
        tag = sender_tag(spec)
        self.tag = tag
        if count <= 0:
            self._stop: Any = threading.Event()
            self._composed: Any = threading.Event()
            name = f"{tag}t0"
            worker = _Worker(name, None)
            worker.handle = threading.Thread(target=self._thread_main, args=(worker,),
                                             name="sender", daemon=True)
            self._workers = [worker]
        else:
            ctx = multiprocessing.get_context("spawn")
            self._stop, self._composed = ctx.Event(), ctx.Event()
            pipes = [ctx.Pipe(duplex=False) for _ in range(count)] if early else []
            self._begin = [sent for _, sent in pipes]
            self._workers = [
                _Worker(f"{tag}p{n}", ctx.Process(
                    target=_process_main, name=f"sender-{n}", daemon=True,
                    args=(spec, f"{tag}p{n}", self._stop, self._composed,
                          pipes[n][0] if early else None)))
                for n in range(count)]
        if count <= 0:
            self._workers[0].handle.start()
            self._starter: threading.Thread | None = None
        else:
            # From a thread of its own: a process's start writes its description (with the
            # roster: 10,000 addresses) into a pipe that the new interpreter reads only after
            # its imports, and the run would wait for them instead of composing meanwhile.
            self._starter = threading.Thread(target=self._start_processes,
                                             name="sender-start", daemon=True)
            self._starter.start()

    @property
    def begun(self) -> bool:
        """Sending (or free to): not early senders still waiting for their run's number."""
        return not self._begin

    def begin(self, run_id: int) -> None:
        """The run has its number: early senders take it, and their names, and start."""
        self.spec = replace(self.spec, run_id=run_id)
        self.tag = sender_tag(self.spec)
        for n, (w, pipe) in enumerate(zip(self._workers, self._begin, strict=True)):
            w.name = f"{self.tag}p{n}"
            with contextlib.suppress(OSError):  # it died before: check() says so
                pipe.send((run_id, w.name))
        self._begin = []

    def _pause(self, seconds: float) -> None:
        """A pause that ends as soon as a sender process does (the run's end waits on the
        last one, and a fixed sleep added half its length on average)."""
        ended = []
        for process in self._started():
            if process.exitcode is None:
                with contextlib.suppress(ValueError):  # its start is still under way
                    ended.append(process.sentinel)
        if ended:
            multiprocessing.connection.wait(ended, timeout=seconds)
        else:
            time.sleep(seconds)

    def end(self, timeout: float | None = None) -> None:
        """Stopped, and their processes gone: killed after `timeout` seconds, by default 5 for
        senders never begun (their processes may still be importing) and, for those that
        began, one message's deadline, so that the message on each one's wire can finish."""
        if timeout is None:
            timeout = self.spec.timeout + 5 if self.begun else 5.0
        self.stop()
        if self._starter is not None:
            self._starter.join(max(timeout, 5.0))  # a start in progress has no process yet
        deadline = time.monotonic() + timeout
        for process in self._started():
            process.join(max(deadline - time.monotonic(), 0.0))
            if process.exitcode is None:
                process.kill()
                process.join(5)

    def _started(self) -> list[multiprocessing.process.BaseProcess]:
        """The sender processes that have a process (threads and unstarted ones aside)."""
        return [w.handle for w in self._workers
                if isinstance(w.handle, multiprocessing.process.BaseProcess)
                and w.handle.pid is not None]

    def _start_processes(self) -> None:
        for w in self._workers:
            try:
                w.handle.start()
            except BaseException as e:  # reported by check() as a sender that died
                logger.error("sender %s could not start: %s", w.name, e)
                w.error = e

    def _thread_main(self, worker: _Worker) -> None:
        try:
            sender = Sender(self.spec, worker.name, self._stop, self._composed)
            sender.run()
            if self.spec.worker and sender.blocked:
                raise DeliveryError(sender.blocked, fatal=True)
        except BaseException as e:  # the run reports it as a sender that died; the thread ends
            if isinstance(e, DigestMailerError):
                logger.error("sender thread: %s", e)
            else:
                logger.exception("sender thread: unexpected %s", type(e).__name__)
            worker.error = e
            self._errors.append(e)

    def check(self, ledger: Ledger) -> int:
        """Notices senders that ended; puts back what a dead one held. Returns how many live."""
        live = 0
        for w in self._workers:
            code = w.exitcode
            if code is None:
                live += 1
                continue
            if not w.settled:
                w.settled = True
                back = ledger.outbox.return_claimed(w.name, "its sender died while it waited "
                                                            "to go out; the next run sends it")
                if code != 0 or back:
                    why = f"{type(w.error).__name__}: {w.error}"[:300] if w.error else \
                        f"exit {code}"
                    self.died.append(f"{w.name} ({why})")
                    logger.error("sender %s ended with exit code %s; %d message(s) it held "
                                 "wait for the next run", w.name, code, back)
        return live

    def composed(self) -> None:
        self._composed.set()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, ledger: Ledger, should_stop: Callable[[], bool]) -> None:
        """Until every sender has ended: they end when the queue is empty, or at a stop after
        the message each has on the wire (bounded by the message deadline)."""
        stop_at: float | None = None
        while self.check(ledger):
            if stop_at is None and should_stop():
                self.stop()
            if stop_at is None and self._stop.is_set():
                stop_at = time.monotonic() + self.spec.timeout + 5
            if stop_at is not None and time.monotonic() > stop_at:
                self.end(timeout=0.0)
                self.check(ledger)
                break
            self._pause(0.05)
        if self._errors and isinstance(self._errors[0], StoreError | DeliveryError):
            raise self._errors[0]
