"""One run at a time per ledger, across processes: an OS file lock beside the ledger, with a
note of who holds it so the one refused can say so; and a second lock that a run's sender
processes share while they live, so a new run cannot start while a sender of a dead one still
sends."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from digest_mailer.errors import DigestMailerError, StoreError

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


def holder_of(state_path: Path) -> str | None:
    """Who holds the run lock beside this SQLite ledger (as the holder noted it), or None."""
    info = lock_path(state_path)
    info = info.with_name(info.name + ".info")
    return _holder(info) if info.exists() else None


def senders_lock_path(ledger: str) -> Path:
    return Path(ledger + ".senders")


def _unwritable(path: Path, e: OSError) -> StoreError:
    return StoreError(f"{path}: cannot create the run lock ({e.strerror or e})",
                      hint=f"the folder {path.parent} must exist and be writable by the user "
                           "running digest-mailer (the lock and the ledger live there)")


def wait_for_senders(state_path: Path, timeout: float) -> None:
    """Returns once no sender process of an earlier run is alive (they hold this lock shared
    while they live, and stop by themselves when their run's process is gone)."""
    path = senders_lock_path(str(state_path))
    end = time.monotonic() + timeout
    try:
        with open(path, "a") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                    return
                except BlockingIOError:
                    if time.monotonic() > end:
                        raise Busy(f"a sender process of an earlier run still holds {path}",
                                   hint="it stops within the SMTP timeout; try again") from None
                    time.sleep(0.1)
    except OSError as e:
        raise _unwritable(path, e) from e


@contextmanager
def run_lock(state_path: Path, what: str, *, wait: float | None = 0) -> Iterator[None]:
    """Hold the run lock. `wait`: 0 fails at once when it is taken, None waits for as long as it
    takes, a number waits that many seconds."""
    path = lock_path(state_path)
    info = path.with_name(path.name + ".info")
    lock = FileLock(str(path), timeout=-1 if wait is None else wait)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout as e:
        raise Busy(f"another run holds {path}: {_holder(info)}",
                   hint="wait for it to finish, or pass --wait") from e
    except OSError as e:
        raise _unwritable(path, e) from e
    try:
        try:
            info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                        "what": what, "since": datetime.now(UTC).isoformat(
                                            timespec="seconds")}))
        except OSError as e:
            raise _unwritable(info, e) from e
        logger.debug("holding %s", path)
        yield
    finally:
        try:
            info.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            lock.release()
