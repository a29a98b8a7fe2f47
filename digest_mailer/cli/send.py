"""send: a worker that sends what waits in the outbox (on PostgreSQL, from any host)."""

from __future__ import annotations

import os
import threading

import click

from digest_mailer.cli import cli
from digest_mailer.cli.common import config_option, load
from digest_mailer.errors import DigestMailerError


@cli.command()
@config_option
@click.option("--connections", type=click.IntRange(0, 16), default=None,
              help="SMTP connections of this worker (default: [delivery.smtp] connections; "
                   "0: one, in this process)")
@click.option("--until-empty", is_flag=True,
              help="stop once nothing in the outbox may go out now, instead of waiting for "
                   "more until SIGTERM/SIGINT")
def send(config_path: str | None, connections: int | None, until_empty: bool) -> None:
    """Send what waits in the outbox, until SIGTERM or SIGINT (or --until-empty)."""
    from digest_mailer.cli.common import now
    from digest_mailer.preflight import ensure_runnable
    from digest_mailer.scheduler import install_signal_handlers
    from digest_mailer.worker import work

    config = load(config_path)
    ensure_runnable(config, os.environ, now=now(), source_given=True, dry_run=False)
    stop = threading.Event()
    install_signal_handlers(stop)  # finish the message on the wire, release the rest, exit 0
    result = work(config, env=os.environ, stop=stop, connections=connections,
                  until_empty=until_empty)
    if result.died:
        raise DigestMailerError(f"{len(result.died)} sender(s) of this worker ended badly: "
                                f"{', '.join(result.died)}",
                                hint="see the log above; what they held is back in the queue")
    click.echo("Stopped as asked" if result.stopped else "The outbox is empty", err=True)
