"""Offers in the order they were recorded: an id (SQLite's rowid) and a unique index on
(subscriber, paper_id), where the primary key was (subscriber, paper_id) itself (a WITHOUT
ROWID table on SQLite). Old offers are then a range of ids the prune reaches directly (it read
every offer, a second and more of each run at 10,000 subscribers), and a sender's insert
appends where it went into the middle of the table.

The existing rows get their ids in the order of their deliveries (the order they were
recorded in). The new table is built beside the old one, filled, and renamed (no batch mode
needed: no ALTER of a column). The foreign key on delivery_id, which 0002 dropped on
PostgreSQL and the prune switched off on SQLite, is not declared on either engine any more.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COLUMNS = "subscriber, paper_id, delivery_id, included"


def _renamed_on_postgresql(table: str) -> None:
    """PostgreSQL keeps the names a table was created with on its key and sequence."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE offers RENAME CONSTRAINT {table}_pkey TO offers_pkey")
        if table == "offers_new":
            op.execute("ALTER SEQUENCE offers_new_id_seq RENAME TO offers_id_seq")


def upgrade() -> None:
    op.create_table('offers_new',
    sa.Column('id', ID, nullable=False),
    sa.Column('subscriber', sa.Text(), nullable=False),
    sa.Column('paper_id', sa.Text(), nullable=False),
    sa.Column('delivery_id', ID, nullable=False),
    sa.Column('included', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.execute(f"INSERT INTO offers_new (id, {COLUMNS}) SELECT row_number() OVER "
               f"(ORDER BY delivery_id, paper_id), {COLUMNS} FROM offers")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SELECT setval(pg_get_serial_sequence('offers_new', 'id'), "
                   "coalesce(max(id), 0) + 1, false) FROM offers_new")
    op.drop_table('offers')
    op.rename_table('offers_new', 'offers')
    _renamed_on_postgresql('offers_new')
    op.create_index('offers_subscriber_paper', 'offers', ['subscriber', 'paper_id'],
                    unique=True)


def downgrade() -> None:
    op.create_table('offers_old',
    sa.Column('subscriber', sa.Text(), nullable=False),
    sa.Column('paper_id', sa.Text(), nullable=False),
    sa.Column('delivery_id', ID, nullable=False),
    sa.Column('included', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('subscriber', 'paper_id'),
    sqlite_with_rowid=False
    )
    op.execute(f"INSERT INTO offers_old ({COLUMNS}) SELECT {COLUMNS} FROM offers")
    op.drop_table('offers')
    op.rename_table('offers_old', 'offers')
    _renamed_on_postgresql('offers_old')
