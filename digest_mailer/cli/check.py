"""check: the config is valid and runnable (the same test `run` and `serve` apply), and what
it sets up; --smtp also tries the server. Imports only what that needs."""

from __future__ import annotations

import os

import click

from digest_mailer.cli import cli
from digest_mailer.cli.common import config_option, load, now
from digest_mailer.errors import ConfigError


@cli.command()
@config_option
@click.option("--smtp", "try_smtp", is_flag=True,
              help="also connect to the SMTP server, start TLS, log in and QUIT (no mail)")
def check(config_path: str | None, try_smtp: bool) -> None:
    """Validate the config, render a sample email, and say what it sets up."""
    from digest_mailer.checkup import describe, probe_smtp
    from digest_mailer.preflight import inspect

    config = load(config_path)
    when = now()
    found = inspect(config, os.environ, now=when)
    if found.errors:
        raise ConfigError(found.errors[0].message, problems=tuple(e.message for e in found.errors),
                          hints=tuple(e.hint for e in found.errors if e.hint))
    for line in describe(config, found, now=when):
        click.echo(line)
    if try_smtp:
        for line in probe_smtp(config, os.environ):
            click.echo(line)
