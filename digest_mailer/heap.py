"""What the garbage collector may skip: the objects a process holds for as long as it works.

A run starts with its config loaded (10,000 subscribers are some 600,000 objects), and every
full collection walked all of them again: four a run at 10,000 subscribers, 40-60 ms each,
a fifth of the run's time outside composing and sending (gc.callbacks, bench/bench.py's
end-to-end run). Frozen, they are left out of every collection until thawed."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def settled() -> Iterator[None]:
    """What exists now is left out of the collections until the block ends; then it is
    collected again like anything else (a process that runs again calls `tidy` between
    runs). Not nested: its end thaws everything frozen."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def settle() -> None:
    """For a process that keeps what it has until it exits (a sender, once it is set up)."""
    gc.freeze()


def tidy() -> None:
    """A full collection, between the runs of a long-lived process (`serve`). Garbage that
    was waiting when a run began was frozen with everything else; thawed, it waits for the
    next full collection, which an idle process may not reach before its next run freezes it
    again, and so on: a leak (review)."""
    gc.collect()
