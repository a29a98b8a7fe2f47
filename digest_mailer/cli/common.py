"""What every command shares: the options, loading the config, printing errors."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from digest_mailer.constants import CONFIG_ENV, DEFAULT_CONFIG, SOURCE_KINDS
from digest_mailer.errors import ConfigError, DigestMailerError

if TYPE_CHECKING:
    from digest_mailer.config import Config


def fail(e: DigestMailerError) -> NoReturn:
    """Every problem as an `Error:` line, then what to do about them."""
    problems = e.problems if isinstance(e, ConfigError) else (e.message,)
    # One line each, whatever a library put in its message (dkimpy, ssl and the TOML parser
    # write several).
    for line in problems:
        click.echo(f"Error: {' '.join(line.split())}", err=True)
    for hint in e.hints:
        click.echo(f"Hint: {' '.join(hint.split())}", err=True)
    sys.exit(1)


def load(path: str | None) -> Config:
    from digest_mailer.config import load_config

    return load_config(config_file(path))


def config_file(path: str | None) -> Path:
    """--config, then $DIGEST_MAILER_CONFIG, then ./digest-mailer.toml."""
    return Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def now() -> datetime:
    return datetime.now(UTC)


def parse_day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2025-06-02") from None


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


config_option = click.option(
    "--config", "config_path", metavar="PATH",
    help="the config file (default: $DIGEST_MAILER_CONFIG, then ./digest-mailer.toml)")
source_option = click.option("--source", metavar="PATH_OR_URL",
                             help="read papers from here instead of [source] location")
kind_option = click.option("--source-kind", type=click.Choice(SOURCE_KINDS),
                           help="the --source's kind (default: read off a file's content)")
out_option = click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                          help="where previews go (default: delivery.out_dir)")
date_option = click.option("--date", "run_date", metavar="YYYY-MM-DD", callback=parse_day,
                           help="the run date (default: today in newsletter.timezone)")
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
