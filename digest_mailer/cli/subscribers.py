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
    """List and edit the [[subscribers]] of the config."""


@subscribers.command("list")
@config_option
@json_option
def list_(config_path: str | None, as_json: bool) -> None:
    """Every subscriber and their filters, and who is suppressed."""
    from digest_mailer.store import Ledger

    config = load(config_path)
    subs = config.subscribers_view()
    with Ledger.open_readonly(config.state_target) as ledger:
        suppressed = ledger.suppressions()
    if as_json:
        echo_json([{"email": s.email, "name": s.name, "topics": list(s.topics),
                    "exclude": list(s.exclude), "authors": list(s.authors),
                    "min_upvotes": s.min_upvotes, "max_papers": s.max_papers,
                    "frequency": s.frequency, "weekday": WEEKDAYS[s.weekday],
                    "paused": s.paused,
                    "suppressed": suppressed.get(s.key, (None,))[0]} for s in subs])
        return
    for s in subs:
        what = []
        if s.topics:
            what.append("topics: " + ", ".join(s.topics))
        if s.authors:
            what.append("authors: " + ", ".join(s.authors))
        if s.exclude:
            what.append("exclude: " + ", ".join(s.exclude))
        flags = [f"weekly on {WEEKDAYS[s.weekday]}" if s.frequency == "weekly" else "daily",
                 f"max {s.max_papers}"] + (["PAUSED"] if s.paused else [])
        if s.key in suppressed:
            flags.append(f"SUPPRESSED: {suppressed[s.key][0]}")
        click.echo(f"{s.email}" + (f" ({s.name})" if s.name else "") + f"  [{', '.join(flags)}]"
                   + ("  " + "; ".join(what) if what else "  all papers"))
    click.echo(f"{len(subs)} subscriber(s), {sum(1 for s in subs if s.paused)} paused, "
               f"{sum(1 for s in subs if s.key in suppressed)} suppressed")


F = TypeVar("F", bound=Callable[..., Any])


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
def add(config_path: str | None, email: str, **filters: Any) -> None:
    """Add a subscriber (no --topic and no --author: every paper)."""
    from digest_mailer.config_edit import add_subscriber

    click.echo(add_subscriber(config_file(config_path), email, _change(filters, None)))


@subscribers.command()
@config_option
@click.argument("email")
def remove(config_path: str | None, email: str) -> None:
    """Remove a subscriber (the ledger keeps what they were sent)."""
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
def set_(config_path: str | None, email: str, pause: bool | None, clear_topics: bool,
         clear_exclude: bool, clear_authors: bool, **filters: Any) -> None:
    """Change a subscriber; each option given replaces that key (--topic replaces all topics;
    --clear-topics removes them)."""
    from digest_mailer.config_edit import set_subscriber

    clear = tuple(k for k, on in (("topics", clear_topics), ("exclude", clear_exclude),
                                  ("authors", clear_authors)) if on)
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
