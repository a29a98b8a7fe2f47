"""Who may be mailed right now: asked by a sender just before each message goes out, not when it
was composed. The suppression list (unsubscribes, bounces) is read from the ledger each time;
the config is re-read when its file changes, so a subscriber removed or paused during a run, or
long after a message was left in the outbox, is not mailed."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from digest_mailer.errors import DigestMailerError
from digest_mailer.store import Ledger

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

    @classmethod
    def of(cls, path: Path | None, pairs: list[tuple[str, bool]]) -> Roster:
        """`pairs`: (address, paused) for every subscriber; the stamp is taken before the
        caller read the file, so an edit in between is seen as a change."""
        return cls(str(path) if path else None, stamp(path) if path else None,
                   frozenset(a.lower() for a, p in pairs if not p),
                   frozenset(a.lower() for a, p in pairs if p))


class Truth:
    def __init__(self, roster: Roster) -> None:
        self._roster = roster

    def refresh(self) -> None:
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
        self._roster = Roster.of(Path(r.path), [(s.email, s.paused) for s in subs])
        self._roster = Roster(r.path, now, self._roster.active, self._roster.paused)
        logger.info("config changed: %d active subscriber(s)", len(self._roster.active))

    def forbidden(self, address: str, ledger: Ledger) -> str | None:
        """Why this address may not be mailed now, or None."""
        key = address.lower()
        why = ledger.suppressed(key)
        if why:
            return f"suppressed ({why})"
        if key in self._roster.paused:
            return "paused (pause = true)"
        if key not in self._roster.active:
            return "no longer a subscriber in the config"
        return None
