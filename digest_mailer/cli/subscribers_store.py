"""subscribers import | export, and add/set/remove --store: the store's self-service
subscribers (the config's are edited in config_edit.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from digest_mailer.cli.common import config_option, load, now
from digest_mailer.cli.subscribers import subscribers
from digest_mailer.errors import DigestMailerError

if TYPE_CHECKING:
    from digest_mailer.config import Config
    from digest_mailer.config_edit import SubscriberChange
    from digest_mailer.store.selfservice import SelfService, StoredSubscriber


@contextmanager
def opened(config: Config) -> Iterator[SelfService]:
    from digest_mailer.store.selfservice import SelfService

    store = SelfService.at(config.state_target)
    try:
        yield store
    finally:
        store.close()


def _checked(email: str, values: dict[str, Any], base: StoredSubscriber | None
             ) -> StoredSubscriber:
    """The row after the change, through the same checks as a config entry."""
    from pydantic import ValidationError

    from digest_mailer.config import SubscriberSettings
    from digest_mailer.constants import WEEKDAYS
    from digest_mailer.store.selfservice import StoredSubscriber

    current: dict[str, Any] = {"email": email}
    if base is not None:
        current.update(name=base.name, topics=list(base.topics), exclude=list(base.exclude),
                       authors=list(base.authors), min_upvotes=base.min_upvotes,
                       frequency=base.frequency, weekday=WEEKDAYS[base.weekday],
                       pause=base.paused)
        if base.max_papers is not None:
            current["max_papers"] = base.max_papers
    current.update(values)
    try:
        s = SubscriberSettings.model_validate(current)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise DigestMailerError(f"{email}: {where}: {err['msg']}",
                                hint="see `digest-mailer subscribers add --help`") from e
    kind = base.kind if base is not None else "store"
    return StoredSubscriber(email=s.email, kind=kind, origin=base.origin if base else "cli",
                            name=s.name, topics=tuple(s.topics), exclude=tuple(s.exclude),
                            authors=tuple(s.authors), min_upvotes=s.min_upvotes,
                            max_papers=s.max_papers, frequency=s.frequency,
                            weekday=WEEKDAYS.index(s.weekday), paused=s.pause,
                            created_at=base.created_at if base else None)


def _in_config(config: Config, email: str) -> bool:
    return any(s.key == email.lower() for s in config.subscribers_view())


def store_add(config: Config, email: str, change: SubscriberChange) -> str:
    if _in_config(config, email):
        raise DigestMailerError(f"{email} is a subscriber in the config",
                                hint="the config's entry is the operator's word: edit it with "
                                     "`subscribers set`, or its override with `set --store`")
    with opened(config) as store:
        if store.get(email) is not None:
            raise DigestMailerError(f"{email} is already in the store",
                                    hint="change it with `subscribers set --store`")
        sub = _checked(email, change.values(), None)
        store.put(sub, now())
    return f"added {sub.email} to the store"


def store_set(config: Config, email: str, change: SubscriberChange) -> str:
    with opened(config) as store:
        base = store.get(email)
        in_config = _in_config(config, email)
        if base is None and not in_config:
            raise DigestMailerError(f"{email} is not in the store nor in the config",
                                    hint="add it with `subscribers add --store`")
        values = change.values()
        for key in change.clear:
            values[key] = []
        if base is None:  # a config subscriber: their override starts from the config's values
            from digest_mailer.audience import merge
            from digest_mailer.store.selfservice import StoredSubscriber

            sub = next(m.subscriber for m in merge(config, []) if m.subscriber.key ==
                       email.lower())
            base = StoredSubscriber(email=sub.email, kind="override", origin="cli",
                                    topics=sub.topics, exclude=sub.exclude,
                                    authors=sub.authors, frequency=sub.frequency,
                                    weekday=sub.weekday, paused=False)
        row = _checked(base.email, values, base)
        store.put(replace(row, kind=base.kind), now())
    what = "their override" if base.kind == "override" else "the store"
    return f"changed {row.email} in {what}"


def store_remove(config: Config, email: str) -> str:
    with opened(config) as store:
        if not store.remove(email):
            raise DigestMailerError(f"{email} is not in the store",
                                    hint="see `digest-mailer subscribers list`")
    if _in_config(config, email):
        return f"dropped {email}'s override: the config's entry applies again"
    return f"removed {email} from the store (the ledger keeps what they were sent)"


@subscribers.command("import")
@config_option
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
def import_(config_path: str | None, csv_file: Path) -> None:
    """Add or update the store's subscribers from a CSV file (header row: email, name,
    topics, exclude, authors, min_upvotes, max_papers, frequency, weekday, paused; lists
    separated by ';'). Idempotent; a bad row imports nothing."""
    from digest_mailer.store import Ledger
    from digest_mailer.subscriber_csv import import_rows, read_rows

    config = load(config_path)
    started = time.perf_counter()
    rows = read_rows(csv_file)
    with Ledger.open(config.state_target) as ledger:
        suppressed = ledger.suppressions()
    keys = frozenset(s.key for s in config.subscribers_view())
    with opened(config) as store:
        result = import_rows(store, rows, config_keys=keys, suppressed=suppressed, now=now())
    for line, email, why in result.skipped[:50]:
        click.echo(f"skipped line {line}: {email}: {why}")
    if len(result.skipped) > 50:
        click.echo(f"... and {len(result.skipped) - 50} more skipped")
    click.echo(f"{len(rows)} row(s): {result.added} added, {result.updated} updated, "
               f"{len(result.skipped)} skipped ({time.perf_counter() - started:.1f} s)")


@subscribers.command("export")
@config_option
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="write to this file (default: standard output)")
def export(config_path: str | None, out: Path | None) -> None:
    """The store's subscribers as CSV (the columns `import` reads); config subscribers and
    overrides stay in the config."""
    from digest_mailer.audience import stored
    from digest_mailer.subscriber_csv import write_rows

    config = load(config_path)
    rows = [s for s in stored(config.state_target) if s.kind == "store"]
    if out is None:
        write_rows(rows, sys.stdout)
        return
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            n = write_rows(rows, f)
        tmp.replace(out)
    except OSError as e:
        raise DigestMailerError(f"{out}: cannot write: {e.strerror}") from e
    click.echo(f"{n} subscriber(s) written to {out}", err=True)
