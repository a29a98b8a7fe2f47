"""Commands only: parse arguments, call one function, print. `Error: ...` and exit 1 on any
DigestMailerError; click's usage errors exit 2. Heavy modules load inside the commands."""

from __future__ import annotations

import logging
import sys

import click

from digest_mailer import __version__


class _Cli(click.Group):
    """Any DigestMailerError from any command becomes `Error:` lines, a hint and exit 1."""

    def invoke(self, ctx: click.Context) -> object:
        from digest_mailer.cli.common import fail
        from digest_mailer.errors import DigestMailerError

        try:
            return super().invoke(ctx)
        except DigestMailerError as e:
            fail(e)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="digest-mailer")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="how much to log to stderr (default: info for serve, "
                                 "warning otherwise)")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """Trending ML papers from the Hugging Face Daily Papers feed, one digest per subscriber."""
    level = log_level or ("info" if ctx.invoked_subcommand in ("serve", "send") else "warning")
    detailed = level in ("debug", "info")
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if detailed
                        else "%(levelname)s: %(message)s")
    # APScheduler logs every job start and end at info; its own warnings still show.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))


def main() -> None:
    cli.main(prog_name="digest-mailer")


from digest_mailer.cli import (  # noqa: E402  (they register commands)
    check,
    db,
    ledger,
    runs,
    send,
    subscribers,
    web,
)

__all__ = ["check", "cli", "db", "ledger", "main", "runs", "send", "subscribers", "web"]
