"""check, run, preview, serve."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import click

from digest_mailer.cli import cli
from digest_mailer.cli.common import (
    config_file,
    config_option,
    date_option,
    echo_json,
    json_option,
    kind_option,
    load,
    now,
    out_option,
    source_option,
)
from digest_mailer.errors import DigestMailerError
from digest_mailer.models import RunState

if TYPE_CHECKING:
    from digest_mailer.config import Config
    from digest_mailer.models import RunReport, SubscriberOutcome
    from digest_mailer.pipeline import RunOptions

logger = logging.getLogger(__name__)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[SubscriberOutcome], None] | None]:
    """A progress bar on a terminal (stderr); nothing otherwise: the log says it all."""
    if not enabled or total == 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("subscribers", total=total)
        yield lambda outcome: bar.advance(task)


def _run(config_path: str | None, options: RunOptions, as_json: bool = False) -> RunReport:
    from digest_mailer.pipeline import run
    from digest_mailer.report import report_dict, report_lines
    from digest_mailer.scheduler import install_signal_handlers

    config = load(config_path)
    interactive = sys.stderr.isatty() and not as_json
    stop = threading.Event()
    install_signal_handlers(stop)  # SIGTERM/SIGINT: finish what is on the wire, then stop
    if interactive:  # the bar's length: the store's subscribers count too
        from digest_mailer.audience import everyone

        total = len(everyone(config))
    else:
        total = len(config.subscribers_view())
    with _progress(total, interactive) as on_progress:
        report = run(config, options, now=now(), env=os.environ, on_progress=on_progress,
                     should_stop=stop.is_set)
    if as_json:
        echo_json(report_dict(report))
    else:
        for line in report_lines(report):
            click.echo(line)
    return report


@cli.command()
@config_option
@click.option("--dry-run", is_flag=True,
              help="write the emails to files (under --out) and leave the ledger alone")
@out_option
@source_option
@kind_option
@date_option
@click.option("--wait", is_flag=True, help="wait for another run to finish instead of failing")
@click.option("--compose-only", is_flag=True,
              help="compose into the outbox and leave the sending to `send` workers")
@json_option
def run(config_path: str | None, dry_run: bool, out_dir: Path | None, source: str | None,
        source_kind: str | None, run_date: date | None, wait: bool, compose_only: bool,
        as_json: bool) -> None:
    """Run the digest once, now."""
    from digest_mailer.models import Status
    from digest_mailer.pipeline import RunOptions

    options = RunOptions(dry_run=dry_run, out_dir=out_dir, source=source,
                         source_kind=source_kind, run_date=run_date,
                         wait=None if wait else 0, compose_only=compose_only)
    report = _run(config_path, options, as_json)
    if report.state is RunState.STOPPED:
        click.echo(f"Stopped as asked: {report.failed} subscriber(s) wait for the next run",
                   err=True)
        return  # a stop that was asked for is not an error (systemd expects 0)
    if compose_only and not dry_run:
        queued = report.count(Status.PENDING)
        click.echo(f"Composed: {queued} message(s) queued for the send workers", err=True)
        if not report.count(Status.FAILED, Status.NOT_ATTEMPTED, Status.DEFERRED):
            return
    if report.failed:
        raise DigestMailerError(
            f"{report.failed} of {len(report.outcomes)} subscriber(s) did not get their email",
            hint="fix the cause above; the next run sends what waits in the outbox"
            if report.stopped else "their papers stay unsent and go out with the next run")


@cli.command()
@config_option
@click.option("--to", "email", required=True, metavar="EMAIL", help="the subscriber")
@out_option
@source_option
@kind_option
@date_option
@click.option("--ignore-ledger", is_flag=True,
              help="preview as if nothing had been sent to them yet")
def preview(config_path: str | None, email: str, out_dir: Path | None, source: str | None,
            source_kind: str | None, run_date: date | None, ignore_ledger: bool) -> None:
    """Write one subscriber's email, as it would go out now, to files."""
    from digest_mailer.pipeline import RunOptions

    _run(config_path, RunOptions(dry_run=True, out_dir=out_dir, source=source,
                                 source_kind=source_kind, run_date=run_date, only=email,
                                 ignore_ledger=ignore_ledger))


@cli.command()
@config_option
@click.option("--once-now", is_flag=True,
              help="run once right away, then keep the schedule (to test a deployment)")
def serve(config_path: str | None, once_now: bool) -> None:
    """Run the digest on the config's [schedule] until SIGTERM or SIGINT."""
    from digest_mailer.pipeline import RunOptions
    from digest_mailer.pipeline import run as run_pipeline
    from digest_mailer.report import report_lines
    from digest_mailer.scheduler import Daemon, install_signal_handlers
    from digest_mailer.serving import Fleet

    stop = threading.Event()

    def scheduled_run(config: Config, stop: threading.Event) -> RunReport:
        # A run started by hand may hold the lock: wait for it (within the grace) rather than
        # skip the slot; its deliveries are in the ledger, so nothing goes out twice.
        return run_pipeline(config, RunOptions(wait=config.schedule.misfire_grace), now=now(),
                            env=os.environ, should_stop=stop.is_set)

    def log_report(report: RunReport) -> None:
        for line in report_lines(report):
            logger.info("%s", line)

    install_signal_handlers(stop)
    # On PostgreSQL several `serve` may run: one leads (composes at each scheduled time), all
    # send (a `send` worker inside each). On SQLite: one host, the run lock, as before.
    with Fleet(load(config_path), os.environ, stop) as fleet:
        daemon = Daemon(config_path=config_file(config_path), run=scheduled_run,
                        now=now, stop=stop, on_report=log_report, lead=fleet.lead)
        daemon.serve(once_now=once_now)
