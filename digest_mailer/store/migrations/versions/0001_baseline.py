"""Baseline: the ledger as schema 3 (PRAGMA user_version 3) left it, before Alembic.

A SQLite ledger of schema 3 is stamped with this revision (its tables already are these);
schemas 1 and 2 are first brought to 3 by store/schema.py's legacy script.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None
OPEN = "state IN ('pending', 'sending', 'deferred')"
ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('outbox_sets',
    sa.Column('id', ID, nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('template', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('papers',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('upvotes', sa.Integer(), nullable=False),
    sa.Column('listed_on', sa.Text(), nullable=True),
    sa.Column('first_seen', sa.Text(), nullable=False),
    sa.Column('last_seen', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('runs',
    sa.Column('id', ID, nullable=False),
    sa.Column('started_at', sa.Text(), nullable=False),
    sa.Column('finished_at', sa.Text(), nullable=True),
    sa.Column('run_date', sa.Text(), nullable=False),
    sa.Column('origin', sa.Text(), nullable=False),
    sa.Column('fetched', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('sent', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('failed', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('outcome', sa.Text(), server_default=sa.text("'running'"), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('host', sa.Text(), nullable=True),
    sa.Column('cause', sa.Text(), nullable=True),
    sa.Column('hold_until', sa.Double(), server_default=sa.text('0'), nullable=False),
    sa.Column('trouble', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('blocked', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('suppressions',
    sa.Column('subscriber', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('since', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), server_default=sa.text("''"), nullable=False),
    sa.PrimaryKeyConstraint('subscriber'),
    sqlite_with_rowid=False
    )
    op.create_table('deliveries',
    sa.Column('id', ID, nullable=False),
    sa.Column('run_id', ID, nullable=True),
    sa.Column('subscriber', sa.Text(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('sent_at', sa.Text(), nullable=False),
    sa.Column('papers', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('deliveries_subscriber', ['subscriber', 'sent_at'], unique=False)

    op.create_table('outbox',
    sa.Column('id', ID, nullable=False),
    sa.Column('run_id', ID, nullable=True),
    sa.Column('set_id', ID, nullable=True),
    sa.Column('subscriber', sa.Text(), nullable=False),
    sa.Column('recipient', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('unsubscribe_url', sa.Text(), nullable=False),
    sa.Column('token', sa.Text(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('envelope_from', sa.Text(), nullable=False),
    sa.Column('included', sa.Text(), nullable=False),
    sa.Column('offered', sa.Text(), nullable=False),
    sa.Column('state', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.Text(), nullable=False),
    sa.Column('owner_run', ID, nullable=True),
    sa.Column('next_try', sa.Double(), nullable=True),
    sa.Column('tries', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('claimed_by', sa.Text(), nullable=True),
    sa.Column('lease_until', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('outbox_claim', ['owner_run', 'state', 'id'], unique=False)
        batch_op.create_index('outbox_open', ['state', 'subscriber'], unique=False,
                              sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))
        batch_op.create_index('outbox_subscriber', ['subscriber', 'id'], unique=False)

    op.create_table('offers',
    sa.Column('subscriber', sa.Text(), nullable=False),
    sa.Column('paper_id', sa.Text(), nullable=False),
    sa.Column('delivery_id', ID, nullable=False),
    sa.Column('included', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], ),
    sa.PrimaryKeyConstraint('subscriber', 'paper_id'),
    sqlite_with_rowid=False
    )


def downgrade() -> None:
    op.drop_table('offers')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('outbox_subscriber')
        batch_op.drop_index('outbox_open')
        batch_op.drop_index('outbox_claim')

    op.drop_table('outbox')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('deliveries_subscriber')

    op.drop_table('deliveries')
    op.drop_table('suppressions')
    op.drop_table('runs')
    op.drop_table('papers')
    op.drop_table('outbox_sets')
