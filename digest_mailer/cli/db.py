"""db upgrade, current, prune, backup, copy: the ledger itself."""

from __future__ import annotations

from pathlib import Path

import click

from digest_mailer.cli import cli
from digest_mailer.cli.common import config_option, echo_json, json_option, load, now


@cli.group()
def db() -> None:
    """The ledger: its schema, retention, backups, and a move to PostgreSQL."""


@db.command()
@config_option
@json_option
def current(config_path: str | None, as_json: bool) -> None:
    """Where the ledger's schema stands (changes nothing)."""
    from digest_mailer.store.db import Db
    from digest_mailer.store.engines import make_engine
    from digest_mailer.store.schema import HEAD, check_readable

    config = load(config_path)
    target = config.state_target
    path = target.sqlite_path
    if path is not None and not path.exists():
        schema = None
    else:
        conn = Db(make_engine(target, readonly=True), target.label)
        try:
            schema = check_readable(conn, target)
        finally:
            conn.close()
    if as_json:
        echo_json({"ledger": target.label, "revision": schema.revision if schema else None,
                   "user_version": schema.user_version if schema else None, "head": HEAD,
                   "current": bool(schema and schema.current)})
        return
    click.echo(f"{target.label}: " + (schema.describe() if schema and schema.has_tables
                                      else "empty (created by the first run)"))


@db.command()
@config_option
def upgrade(config_path: str | None) -> None:
    """Brings the ledger's schema up to this version's (a SQLite ledger is backed up beside
    itself first). Every command does this on first use; this does it now."""
    from digest_mailer.store import Ledger
    from digest_mailer.store.schema import HEAD

    config = load(config_path)
    target = config.state_target
    with Ledger.open(target) as ledger:  # opening it read-write is the upgrade
        before = ledger.schema_before
    click.echo(f"{target.label}: at revision {HEAD}" + (
        "" if before is None or before.current else f" (was {before.describe()})"))


@db.command()
@config_option
@json_option
def prune(config_path: str | None, as_json: bool) -> None:
    """Deletes what the retention policy no longer keeps (every run does this at its end)."""
    from digest_mailer.pipeline import retention_of
    from digest_mailer.store import Ledger
    from digest_mailer.store.ops import size_bytes
    from digest_mailer.store.retention import prune as prune_ledger

    config = load(config_path)
    policy = retention_of(config)
    with Ledger.open(config.state_target) as ledger:
        done = prune_ledger(ledger, policy, now())
        ledger.checkpoint()
        size = size_bytes(ledger)
    if as_json:
        echo_json({"deliveries": done.deliveries,
                   "messages": done.messages, "papers": done.papers,
                   "size_bytes": size, "policy": policy.describe()})
        return
    click.echo(f"Pruned {done.deliveries} sent-email record(s), "
               f"{done.messages} outbox row(s), {done.papers} paper(s)")
    click.echo(f"Policy: {policy.describe()}")
    if size is not None:
        click.echo(f"Ledger: {size / 1e6:.1f} MB (a SQLite file reuses the space it freed)")


@db.command()
@config_option
@click.argument("dest", type=click.Path(path_type=Path))
def backup(config_path: str | None, dest: Path) -> None:
    """A consistent copy of the SQLite ledger at DEST, while runs go on (SQLite's online
    backup API). For a PostgreSQL ledger use pg_dump."""
    from digest_mailer.store import Ledger
    from digest_mailer.store.ops import backup as backup_ledger

    config = load(config_path)
    with Ledger.open(config.state_target) as ledger:
        size = backup_ledger(ledger, dest)
    click.echo(f"{config.state_target.label} -> {dest} ({size / 1e6:.1f} MB)")


@db.command()
@config_option
@click.option("--to", "url", required=True, metavar="postgresql://USER@HOST:PORT/DB",
              help="an empty PostgreSQL database (the password from $DIGEST_STATE_PASSWORD)")
def copy(config_path: str | None, url: str) -> None:
    """Copies the ledger (every table, ids kept) into an empty PostgreSQL database; then set
    [state] url to it. Stop runs and `serve` first: what they write meanwhile is not copied."""
    from digest_mailer.store import Ledger, StoreTarget

    config = load(config_path)
    st = config.state
    dest_target = StoreTarget.parse(url, password_env=st.password_env,
                                    password_file=str(config.resolve(st.password_file))
                                    if st.password_file else None)
    if dest_target.kind != "postgresql":
        from digest_mailer.errors import DigestMailerError
        raise DigestMailerError(f"{url}: not a PostgreSQL URL",
                                hint="db copy --to postgresql://user@host:5432/dbname")
    from digest_mailer.store.ops import copy as copy_ledger

    with Ledger.open(config.state_target) as source, Ledger.open(dest_target) as dest:
        counts = copy_ledger(source, dest, progress=lambda table, rows: click.echo(
            f"  {table}: {rows} row(s)", err=True))
    click.echo(f"Copied {sum(counts.values())} row(s) from {config.state_target.label} to "
               f"{dest_target.label}; now set [state] url = \"{dest_target.label}\"")
