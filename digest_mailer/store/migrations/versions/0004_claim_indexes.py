"""Claim indexes: a sender's claim reaches the first due row and the rows of its digest by
index, in id order. Without them the claim read every row of the run (a `send` worker's: every
row of the outbox, sent ones included) and sorted them twice: 6 ms a claim at 10,000 queued
messages, quadratic in the queue. `outbox_due` is not a partial index of the open rows: SQLite
does not see that `state = 'pending'` implies `state IN (...)`, and scanned the table.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('outbox_set', 'outbox', ['set_id', 'id'])
    op.create_index('outbox_due', 'outbox', ['state', 'id'])


def downgrade() -> None:
    op.drop_index('outbox_due', 'outbox')
    op.drop_index('outbox_set', 'outbox')
