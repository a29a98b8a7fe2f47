"""Several `serve` on one PostgreSQL ledger: one leads, all send.

The leader holds a session-level advisory lock (pglock.LEADER_KEY) on a connection of its own;
only the leader composes at a scheduled time, and when it dies (its connection with it) the
next instance to look takes the lead at its next scheduled time. Every instance also runs a
`send` worker (worker.py) for as long as it serves. On SQLite nothing changes: one host, the
run lock, and every instance leads (the run lock keeps runs apart)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from digest_mailer.errors import DigestMailerError

if TYPE_CHECKING:
    from digest_mailer.config import Config
    from digest_mailer.pglock import AdvisoryLock

logger = logging.getLogger(__name__)


class Fleet:
    def __init__(self, config: Config, env: Mapping[str, str], stop: threading.Event) -> None:
        self._config, self._env, self._stop = config, env, stop
        self._leader: AdvisoryLock | None = None
        self._worker: threading.Thread | None = None

    def __enter__(self) -> Fleet:
        target = self._config.state_target
        if target.kind != "postgresql":
            return self
        from digest_mailer.pglock import LEADER_KEY, AdvisoryLock

        self._leader = AdvisoryLock(target, LEADER_KEY, "serve")
        if self._leader.try_acquire():
            logger.info("this serve leads: it composes at the scheduled times")
        else:
            logger.info("another serve leads; this one sends, and takes the lead if that "
                        "one stops")
        self._worker = threading.Thread(target=self._send, name="send-worker", daemon=True)
        self._worker.start()
        return self

    def lead(self) -> bool:
        """Whether this instance composes now: it holds the lead, or takes it now."""
        leader = self._leader
        if leader is None:
            return True
        try:
            if leader.held and leader.alive():
                return True
            if leader.try_acquire():
                logger.info("this serve now leads")
                return True
        except DigestMailerError as e:
            logger.error("cannot take the lead: %s", e)
        return False

    def _send(self) -> None:
        from digest_mailer.worker import work

        try:
            result = work(self._config, env=self._env, stop=self._stop)
            if result.died:
                logger.error("the send worker's senders ended badly: %s; this serve goes on "
                             "composing", ", ".join(result.died))
        except DigestMailerError as e:
            logger.error("the send worker stopped: %s%s", e,
                         f" (hint: {e.hint})" if e.hint else "")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._worker is not None:
            # The worker's connections each finish the message on their wire (bounded).
            self._worker.join(self._config.delivery.smtp.timeout + 15)
        if self._leader is not None:
            self._leader.release()
