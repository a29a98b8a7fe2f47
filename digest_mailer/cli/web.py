"""web: sign-up, preferences and the one-click unsubscribe service."""

from __future__ import annotations

import logging
import os

import click

from digest_mailer.cli import cli
from digest_mailer.cli.common import config_file, config_option


@cli.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to listen on")
@click.option("--port", default=8025, show_default=True, type=click.IntRange(1, 65535))
def web(config_path: str | None, host: str, port: int) -> None:
    """Serve the sign-up page, confirmation and preferences links, and one-click unsubscribe
    links (RFC 8058) until stopped."""
    import uvicorn

    from digest_mailer.web import Tokens, listen, server_config
    from digest_mailer.web_pages import create_site

    tokens = Tokens(config_file(config_path), os.environ)
    tokens.refresh()  # a bad config or a missing secret fails now, not at the first click
    sock = listen(host, port)  # a port in use is one Error line, not uvicorn's own
    config = server_config(create_site(tokens, os.environ), proxy_headers=True,
                           log_level=logging.getLevelName(logging.getLogger().level).lower())
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
