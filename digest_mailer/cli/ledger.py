"""history, explain, status: what was sent to whom, and why."""

from __future__ import annotations

import os
from datetime import date

import click

from digest_mailer.cli import cli
from digest_mailer.cli.common import (
    config_option,
    date_option,
    echo_json,
    json_option,
    kind_option,
    load,
    now,
    parse_day,
    source_option,
)
from digest_mailer.errors import DigestMailerError
from digest_mailer.models import MessageState


@cli.command()
@config_option
@click.option("--to", "email", metavar="EMAIL", help="only this subscriber")
@click.option("--paper", metavar="ID", help="only emails that held this paper (arXiv id)")
@click.option("--since", metavar="YYYY-MM-DD", callback=parse_day, help="only from this day on")
@json_option
def history(config_path: str | None, email: str | None, paper: str | None,
            since: date | None, as_json: bool) -> None:
    """What was sent, when, under which Message-ID, with which papers; and what was not."""
    from digest_mailer.sources.common import canonical_id
    from digest_mailer.store import Ledger

    config = load(config_path)
    paper_id = canonical_id(paper) if paper else None
    if paper and paper_id is None:
        raise DigestMailerError(f"{paper!r} is not an arXiv id", hint="like 2505.24864")
    with Ledger.open_readonly(config.state_target) as ledger:
        rows = ledger.history(subscriber=email, paper=paper_id, since=since)
    if as_json:
        echo_json([{"sent_at": r.sent_at, "to": r.subscriber, "message_id": r.message_id,
                    "subject": r.subject, "papers": list(r.papers), "titles": list(r.titles),
                    "state": r.state.value, "reason": r.reason} for r in rows])
        return
    for r in rows:
        state = "" if r.state is MessageState.SENT else f"{r.state.value.upper()}  "
        click.echo(f"{r.sent_at[:19]}  {state}{r.subscriber}  {r.message_id}  "
                   f"{len(r.papers)} paper(s)  {r.subject}")
        if r.reason:
            click.echo(f"    why: {r.reason}")
        for pid, title in zip(r.papers, r.titles, strict=True):
            click.echo(f"    {pid:<12} {title[:90]}")
    sent = sum(1 for r in rows if r.state is MessageState.SENT)
    click.echo(f"{sent} email(s) sent" + (f", {len(rows) - sent} not sent" if len(rows) > sent
                                          else ""))


@cli.command()
@config_option
@click.option("--to", "email", required=True, metavar="EMAIL", help="the subscriber")
@source_option
@kind_option
@date_option
@click.option("--topic", "topics", multiple=True, metavar="TOPIC",
              help="try this topic instead of the saved ones (repeatable); nothing is saved")
@json_option
def explain(config_path: str | None, email: str, source: str | None, source_kind: str | None,
            run_date: date | None, topics: tuple[str, ...], as_json: bool) -> None:
    """For every paper in the current feed: kept or dropped for this subscriber, and why."""
    from digest_mailer.overview import explain_subscriber
    from digest_mailer.pipeline import RunOptions

    config = load(config_path)
    result = explain_subscriber(config, RunOptions(source=source, source_kind=source_kind,
                                                   run_date=run_date, only=email),
                                now=now(), topics=topics)
    if as_json:
        echo_json({"email": result.email, "note": result.note, "topics": list(result.topics),
                   "warnings": list(result.warnings),
                   "papers": [{"id": x.paper.id, "title": x.paper.title,
                               "upvotes": x.paper.upvotes, "kept": x.kept, "why": x.reason}
                              for x in result.papers]})
        return
    if result.note:
        click.echo(f"Note: {result.note}")
    if topics:
        click.echo(f"Trying the topics {', '.join(map(repr, result.topics))} (not saved)")
    for line in result.warnings:
        click.echo(line)
    for x in result.papers:
        mark = "KEPT   " if x.kept else "dropped"
        click.echo(f"{mark}  {x.paper.id:<12} {x.paper.upvotes:>4}  {x.paper.title[:70]}")
        click.echo(f"         {x.reason}")
    kept = sum(1 for x in result.papers if x.kept)
    click.echo(f"{kept} of {len(result.papers)} paper(s) would be sent to {result.email}")


@cli.command()
@config_option
@json_option
def status(config_path: str | None, as_json: bool) -> None:
    """Last runs, next scheduled run, ledger size, subscribers."""
    from digest_mailer.overview import status as get_status

    info = get_status(load(config_path), now=now(), env=os.environ)
    if as_json:
        echo_json(info)
        return
    size = info["size_bytes"]
    click.echo(f"Ledger: {info['ledger']}" + (f", {size / 1e6:.1f} MB" if size else "") +
               f" ({info['deliveries']} deliveries, "
               f"{info['papers']} papers, {info['runs']} runs)")
    click.echo(f"Retention: {info['retention']}")
    subs = info["subscribers"]
    click.echo(f"Subscribers: {subs['active']} active, {subs['paused']} paused, "
               f"{subs['suppressed']} suppressed")
    for source, n in info["subscribers_by_source"].items():
        click.echo(f"  {source}: {n['active']} active, {n['paused']} paused, "
                   f"{n['unsubscribed']} unsubscribed, {n['suppressed']} suppressed")
    su = info["signups"]
    click.echo(f"Sign-ups: {su['pending']} pending confirmation; last day "
               f"{su['requested_last_day']} requested, {su['confirmed_last_day']} confirmed; "
               f"last week {su['requested_last_week']} requested, "
               f"{su['confirmed_last_week']} confirmed")
    for email, why in info["suppressed"].items():
        click.echo(f"  suppressed {email}: {why['reason']} since {why['since'][:10]}"
                   + (f" ({why['detail']})" if why["detail"] else ""))
    if info["outbox"]["waiting"]:
        click.echo(f"Outbox: {info['outbox']['waiting']} message(s) wait for the next run")
    if info["problems"]:
        click.echo("Latest messages not sent:")
        for p in info["problems"]:
            click.echo(f"  {p['at'][:19]}  {p['state']:<9}  {p['to']}: {p['why']}")
    click.echo(f"Schedule: {info['schedule']} -> next run {info['next_run']}")
    lock = info.get("run_lock")
    click.echo(f"Run lock: held by {lock}" if lock else "Run lock: free")
    click.echo("Last runs:")
    for r in info["last_runs"]:
        click.echo(f"  #{r['id']:<4} {r['started_at'][:19]}  for {r['run_date']}  "
                   f"{r['outcome']:<13} fetched {r['fetched']}, sent {r['sent']}, "
                   f"failed {r['failed']}" + (f"  ({r['cause']})" if r["cause"] else ""))
    if not info["last_runs"]:
        click.echo("  none yet")
