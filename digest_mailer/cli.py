"""Commands only: parse arguments, call one function, print. `Error: ...` and exit 1 on any
DigestMailerError; click's usage errors exit 2."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from digest_mailer import __version__
from digest_mailer.config import SOURCE_KINDS, Config, find_config, load_config
from digest_mailer.errors import ConfigError, DigestMailerError
from digest_mailer.models import RunReport, Status, SubscriberOutcome

if TYPE_CHECKING:
    from digest_mailer.pipeline import RunOptions

logger = logging.getLogger(__name__)


def _fail(e: DigestMailerError) -> None:
    problems = e.problems if isinstance(e, ConfigError) else (e.message,)
    for line in problems:
        click.echo(f"Error: {line}", err=True)
    if e.hint:
        click.echo(f"Hint: {e.hint}", err=True)
    sys.exit(1)


def _load(path: str | None) -> Config:
    return load_config(find_config(path))


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2025-06-02") from None


config_option = click.option(
    "--config", "config_path", metavar="PATH",
    help="the config file (default: $DIGEST_MAILER_CONFIG, then ./digest-mailer.toml)")
source_option = click.option("--source", metavar="PATH_OR_URL",
                             help="read papers from here instead of [source] location")
kind_option = click.option("--source-kind", type=click.Choice(SOURCE_KINDS),
                           help="the --source's kind (default: read off a file's content)")
out_option = click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                          help="where previews go (default: delivery.out_dir)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="digest-mailer")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True, help="how much to log to stderr")
def cli(log_level: str) -> None:
    """Trending ML papers from the Hugging Face Daily Papers feed, one digest per subscriber."""
    detailed = log_level in ("debug", "info")
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if detailed
                        else "%(levelname)s: %(message)s")


@cli.command()
@config_option
def check(config_path: str | None) -> None:
    """Validate the config and say what it sets up."""
    try:
        config = _load(config_path)
    except DigestMailerError as e:
        _fail(e)
        return
    from digest_mailer.pipeline import describe

    for line in describe(config, os.environ):
        click.echo(line)


@cli.command()
@config_option
@click.option("--dry-run", is_flag=True,
              help="write the emails to files (under --out) and leave the ledger alone")
@out_option
@source_option
@kind_option
@click.option("--date", "run_date", metavar="YYYY-MM-DD", callback=_parse_date,
              help="the run date (default: today in newsletter.timezone)")
def run(config_path: str | None, dry_run: bool, out_dir: Path | None, source: str | None,
        source_kind: str | None, run_date: date | None) -> None:
    """Run the digest once, now."""
    from digest_mailer.pipeline import RunOptions

    options = RunOptions(dry_run=dry_run, out_dir=out_dir, source=source,
                         source_kind=source_kind, run_date=run_date)
    report = _run(config_path, options)
    if report.failed:
        _fail(DigestMailerError(
            f"{report.failed} of {len(report.outcomes)} subscriber(s) did not get their email",
            hint=(report.stopped and "fix the cause above; the next run sends what was not sent")
            or "their papers stay unsent and go out with the next run"))


@cli.command()
@config_option
@click.option("--to", "email", required=True, metavar="EMAIL", help="the subscriber")
@out_option
@source_option
@kind_option
@click.option("--date", "run_date", metavar="YYYY-MM-DD", callback=_parse_date,
              help="the run date (default: today in newsletter.timezone)")
@click.option("--ignore-ledger", is_flag=True,
              help="preview as if nothing had been sent to them yet")
def preview(config_path: str | None, email: str, out_dir: Path | None, source: str | None,
            source_kind: str | None, run_date: date | None, ignore_ledger: bool) -> None:
    """Write one subscriber's email, as it would go out now, to files."""
    from digest_mailer.pipeline import RunOptions

    _run(config_path, RunOptions(dry_run=True, out_dir=out_dir, source=source,
                                 source_kind=source_kind, run_date=run_date, only=email,
                                 ignore_ledger=ignore_ledger))


def _run(config_path: str | None, options: RunOptions) -> RunReport:
    from digest_mailer.pipeline import run

    try:
        config = _load(config_path)
        report = run(config, options, now=_now(), env=os.environ)
    except DigestMailerError as e:
        _fail(e)
        raise AssertionError("unreachable") from e
    for line in format_report(report):
        click.echo(line)
    return report


_MARK = {Status.SENT: "sent", Status.WRITTEN: "written", Status.NOTHING_NEW: "nothing new",
         Status.NO_MATCH: "no match", Status.FAILED: "FAILED", Status.NOT_ATTEMPTED: "not sent"}


def _outcome_line(o: SubscriberOutcome, width: int) -> str:
    where = f" -> {o.location}" if o.location and o.status is Status.WRITTEN else ""
    return f"  {o.email:<{width}}  {_MARK[o.status]:<11}  {o.detail}{where}"


def format_report(report: RunReport) -> list[str]:
    mode = " (dry run: nothing sent, ledger untouched)" if report.dry_run else ""
    lines = [f"Run for {report.run_date}{mode}",
             f"Papers fetched: {report.fetched} from {report.origin}"
             + (f" ({report.skipped} skipped: no id or title)" if report.skipped else "")]
    width = max((len(o.email) for o in report.outcomes), default=0)
    lines += [_outcome_line(o, width) for o in report.outcomes]
    verb = "written" if report.dry_run else "sent"
    lines.append(f"{report.delivered} email(s) {verb}, "
                 f"{report.count(Status.NOTHING_NEW, Status.NO_MATCH)} with nothing to send, "
                 f"{report.failed} failed")
    written = [o.location for o in report.outcomes if o.status is Status.WRITTEN and o.location]
    if written:
        lines.append(f"Preview: {Path(written[0]).parent / 'index.html'}")
    return lines


def main() -> None:
    cli.main(prog_name="digest-mailer", standalone_mode=True)

