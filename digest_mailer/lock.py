"""One run at a time per ledger, across processes: an OS file lock beside the ledger, with a
note of who holds it so the one refused can say so."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from digest_mailer.errors import DigestMailerError

logger = logging.getLogger(__name__)


class Busy(DigestMailerError):
    """Another run holds the lock."""


def lock_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".lock")


def _holder(info: Path) -> str:
    try:
        data = json.loads(info.read_text())
        return (f"pid {data['pid']} on {data['host']} ({data['what']}, since "
                f"{data['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def run_lock(state_path: Path, what: str, *, wait: float | None = 0) -> Iterator[None]:
    """Hold the run lock. `wait`: 0 fails at once when it is taken, None waits for as long as it
    takes, a number waits that many seconds."""
    path = lock_path(state_path)
    info = path.with_name(path.name + ".info")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=-1 if wait is None else wait)
    try:
        lock.acquire()
    except Timeout as e:
        raise Busy(f"another run holds {path}: {_holder(info)}",
                   hint="wait for it to finish, or pass --wait") from e
    try:
        info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "what": what,
                                    "since": datetime.now(UTC).isoformat(timespec="seconds")}))
        logger.debug("holding %s", path)
        yield
    finally:
        try:
            info.unlink(missing_ok=True)
        finally:
            lock.release()
