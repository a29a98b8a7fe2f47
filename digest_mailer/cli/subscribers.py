"""subscribers list | add | remove | set: edits to the config that keep its comments."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from digest_mailer.cli import cli
from digest_mailer.cli.common import config_file, config_option, echo_json, json_option, load
from digest_mailer.constants import WEEKDAYS
from digest_mailer.errors import DigestMailerError

if TYPE_CHECKING:
    from digest_mailer.config_edit import SubscriberChange


@cli.group()
def subscribers() -> None:
    """List and edit the subscribers: the config's [[subscribers]], or with --store the
    store's self-service ones."""


@subscribers.command("list")
@config_option
@json_option
def list_(config_path: str | None, as_json: bool) -> None:
    """Every subscriber (config and store), their filters, where they come from, and who is
    suppressed."""
    from digest_mailer.audience import members
    from digest_mailer.store import Ledger

    config = load(config_path)
    found = members(config)
    with Ledger.open_readonly(config.state_target) as ledger:
        suppressed = ledger.suppressions()
    if as_json:
        echo_json([{"email": s.email, "name": s.name, "topics": list(s.topics),
                    "exclude": list(s.exclude), "authors": list(s.authors),
                    "min_upvotes": s.min_upvotes, "max_papers": s.max_papers,
                    "frequency": s.frequency, "weekday": WEEKDAYS[s.weekday],
                    "paused": s.paused, "source": m.source, "origin": m.origin or None,
                    "suppressed": suppressed.get(s.key, (None,))[0]}
                   for m in found for s in (m.subscriber,)])
        return
    for m in found:
        s = m.subscriber
        what = []
        if s.topics:
            what.append("topics: " + ", ".join(s.topics))
        if s.authors:
            what.append("authors: " + ", ".join(s.authors))
        if s.exclude:
            what.append("exclude: " + ", ".join(s.exclude))
        # Config subscribers read as they always did; the others say where they come from.
        source = {"config": [], "store": [f"store ({m.origin})"],
                  "config+override": ["config, with their own override"]}[m.source]
        flags = [*source, f"weekly on {WEEKDAYS[s.weekday]}" if s.frequency == "weekly"
                 else "daily", f"max {s.max_papers}"] + (["PAUSED"] if s.paused else [])
        if s.key in suppressed:
            flags.append(f"SUPPRESSED: {suppressed[s.key][0]}")
        click.echo(f"{s.email}" + (f" ({s.name})" if s.name else "") + f"  [{', '.join(flags)}]"
                   + ("  " + "; ".join(what) if what else "  all papers"))
    subs = [m.subscriber for m in found]
    stored = sum(1 for m in found if m.source == "store")
    overridden = sum(1 for m in found if m.source == "config+override")
    where = (f" ({len(subs) - stored} in the config, {stored} in the store, {overridden} "
             "overridden)") if stored or overridden else ""
    click.echo(f"{len(subs)} subscriber(s){where}, {sum(1 for s in subs if s.paused)} paused, "
               f"{sum(1 for s in subs if s.key in suppressed)} suppressed")

F = TypeVar("F", bound=Callable[..., Any])

store_option = click.option("--store", is_flag=True,
                            help="act on the store's self-service subscribers, not the config")


def _filters(fn: F) -> F:
    options = [
        click.option("--name", help="the name in the greeting and the To header"),
        click.option("--topic", "topics", multiple=True, help="a topic (repeat for more)"),
        click.option("--exclude", "exclude", multiple=True, help="a term that excludes a paper"),
        click.option("--author", "authors", multiple=True, help="an author to follow"),
        click.option("--min-upvotes", type=click.IntRange(min=0)),
        click.option("--max-papers", type=click.IntRange(1, 100)),
        click.option("--frequency", type=click.Choice(["daily", "weekly"])),
        click.option("--weekday", type=click.Choice(WEEKDAYS)),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _change(filters: dict[str, Any], pause: bool | None,
            clear: tuple[str, ...] = ()) -> SubscriberChange:
    """The options given; a repeated option left out (an empty tuple) changes nothing."""
    from digest_mailer.config_edit import SubscriberChange

    given = {k: v for k, v in filters.items() if v not in (None, ())}
    return SubscriberChange(pause=pause, clear=clear, **given)


@subscribers.command()
@config_option
@click.argument("email")
@_filters
@store_option
def add(config_path: str | None, email: str, store: bool, **filters: Any) -> None:
    """Add a subscriber (no --topic and no --author: every paper); to the config, or with
    --store to the store."""
    if store:
        from digest_mailer.cli.subscribers_store import store_add

        click.echo(store_add(load(config_path), email, _change(filters, None)))
        return
    from digest_mailer.config_edit import add_subscriber

    click.echo(add_subscriber(config_file(config_path), email, _change(filters, None)))


@subscribers.command()
@config_option
@click.argument("email")
@store_option
def remove(config_path: str | None, email: str, store: bool) -> None:
    """Remove a subscriber (the ledger keeps what they were sent); with --store, from the
    store (for a config subscriber: drops their own override)."""
    if store:
        from digest_mailer.cli.subscribers_store import store_remove

        click.echo(store_remove(load(config_path), email))
        return
    from digest_mailer.config_edit import remove_subscriber

    click.echo(remove_subscriber(config_file(config_path), email))


@subscribers.command("set")
@config_option
@click.argument("email")
@_filters
@click.option("--pause/--resume", default=None, help="stop or restart sending to them")
@click.option("--clear-topics", is_flag=True, help="remove all topics")
@click.option("--clear-exclude", is_flag=True, help="remove all exclusions")
@click.option("--clear-authors", is_flag=True, help="remove all authors")
@store_option
def set_(config_path: str | None, email: str, pause: bool | None, clear_topics: bool,
         clear_exclude: bool, clear_authors: bool, store: bool, **filters: Any) -> None:
    """Change a subscriber; each option given replaces that key (--topic replaces all topics;
    --clear-topics removes them). With --store: a store subscriber, or a config subscriber's
    override (as if they had saved their preferences)."""
    clear = tuple(k for k, on in (("topics", clear_topics), ("exclude", clear_exclude),
                                  ("authors", clear_authors)) if on)
    if store:
        from digest_mailer.cli.subscribers_store import store_set

        click.echo(store_set(load(config_path), email, _change(filters, pause, clear)))
        return
    from digest_mailer.config_edit import set_subscriber

    click.echo(set_subscriber(config_file(config_path), email, _change(filters, pause, clear)))


@subscribers.command()
@config_option
@click.argument("email")
def unsuppress(config_path: str | None, email: str) -> None:
    """Send to an address again after it unsubscribed or bounced (the operator's call)."""
    from digest_mailer.store import Ledger

    config = load(config_path)
    with Ledger.open(config.state_target) as ledger:
        was = ledger.suppressed(email)
        ledger.unsuppress(email)
    if was is None:
        raise DigestMailerError(f"{email} is not suppressed")
    click.echo(f"{email} is no longer suppressed (was: {was})")


from digest_mailer.cli import subscribers_store  # noqa: E402,F401  (registers import, export)
