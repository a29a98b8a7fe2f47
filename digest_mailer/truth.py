"""Who may be mailed right now: asked by a sender just before each message goes out, not when it
was composed. The suppression list (unsubscribes, bounces) is read from the ledger each time;
the config is re-read when its file changes, so a subscriber removed or paused during a run, or
long after a message was left in the outbox, is not mailed."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from digest_mailer.errors import DigestMailerError
from digest_mailer.store import Ledger
from digest_mailer.store.selfservice import SelfService, engine_for, exists
from digest_mailer.store_target import StoreTarget

if TYPE_CHECKING:
    from digest_mailer.config import Config

logger = logging.getLogger(__name__)

Stamp = tuple[int, int, int]  # inode, size, mtime_ns


def stamp(path: str | Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class Roster:
    """The config's subscribers as the run read them (picklable, for a sender process).
    `path` None: no config file to watch (the subscribers were handed in)."""

    path: str | None
    stamp: Stamp | None
    active: frozenset[str]  # lower-cased addresses of subscribers not paused
    paused: frozenset[str]
    store: StoreTarget | None = None  # the ledger holding the self-service subscribers

    @classmethod
    def of(cls, path: Path | None, pairs: list[tuple[str, bool]], *,
           store: StoreTarget | None = None) -> Roster:
        """`pairs`: (address, paused) for every subscriber of the config; the stamp is taken
        before the caller read the file, so an edit in between is seen as a change."""
        return cls(str(path) if path else None, stamp(path) if path else None,
                   frozenset(a.lower() for a, p in pairs if not p),
                   frozenset(a.lower() for a, p in pairs if p), store)

    @classmethod
    def of_config(cls, config: Config) -> Roster:
        """Who a sender of this config may mail: its subscribers, and the store's (the one
        place a run and a `send` worker both build it, so neither forgets the store)."""
        return cls.of(Path(config.path) if config.path else None,
                      [(s.email, s.paused) for s in config.subscribers_view()],
                      store=config.state_target)


STORE_LOOK_SECONDS = 1.0  # how stale the store's list of addresses may be


class Truth:
    def __init__(self, roster: Roster) -> None:
        self._roster = roster
        self._store: SelfService | None = None
        self._stored: set[str] = set()  # addresses with a row in the store (or that had one)
        self._since: datetime | None = None  # the latest change read
        self._revision = -1
        self._looked = -STORE_LOOK_SECONDS

    def _refresh_store(self) -> None:
        """The store's addresses, read again when its revision moved (looked at once a
        second at most: one small read, so a message to a config-only address costs no
        query)."""
        if self._roster.store is None or time.monotonic() - self._looked < STORE_LOOK_SECONDS:
            return
        self._looked = time.monotonic()
        if self._store is None:
            if not exists(self._roster.store):
                return
            self._store = SelfService(engine_for(self._roster.store), self._roster.store.label)
        revision = self._store.revision()
        if revision != self._revision:
            # Only the rows changed since the last look: a removed row's address stays in
            # the set, and its look-up below finds it gone.
            changed, self._since = self._store.keys(self._since)
            self._stored |= changed
            self._revision = revision

    def refresh(self) -> None:
        self._refresh_store()
        r = self._roster
        if r.path is None:
            return
        now = stamp(r.path)  # a stat before each message: no Path built for it
        if now == r.stamp or now is None:
            return
        from digest_mailer.config import load_config

        try:
            subs = load_config(Path(r.path)).subscribers_view()
        except DigestMailerError as e:
            # An edit half-done or invalid: keep what we knew, and look again next time.
            logger.warning("config changed but cannot be read (%s); keeping the last version",
                           e)
            return
        fresh = Roster.of(Path(r.path), [(s.email, s.paused) for s in subs])
        self._roster = Roster(r.path, now, fresh.active, fresh.paused, r.store)
        logger.info("config changed: %d active subscriber(s)", len(self._roster.active))

    def forbidden(self, address: str, ledger: Ledger) -> str | None:
        """Why this address may not be mailed now, or None."""
        key = address.lower()
        why = ledger.suppressed(key)
        if why:
            return f"suppressed ({why})"
        if key in self._roster.paused:
            return "paused (pause = true)"
        in_config = key in self._roster.active
        if self._store is not None and key in self._stored:
            found = self._store.state(key)  # the row as it is now, not as last listed
            if found is not None:
                kind, paused = found
                if paused:
                    return "paused (by their own preferences)"
                if kind == "store" or in_config:
                    return None
        if not in_config:
            return "no longer a subscriber in the config" + (
                " nor in the store" if self._roster.store else "")
        return None
