"""Alembic's entry point. store/schema.py hands over an open connection in
`config.attributes["connection"]`; there is no alembic.ini and no URL here. Batch mode lets
SQLite change a table (it rebuilds the table, as ALTER TABLE cannot)."""

from __future__ import annotations

from alembic import context

from digest_mailer.store.tables import METADATA

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=METADATA, render_as_batch=True,
                  transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
