"""Claim indexes: a sender's claim reaches the first due row and the rows of its digest by
index, in id order. Without them the claim read every row of the run (a `send` worker's: every
row of the outbox, sent ones included) and sorted them twice: 6 ms a claim at 10,000 queued
messages, quadratic in the queue. `outbox_pending` holds pending rows only: a sender's commit
of a sent message changes nothing in it (a full index on the state moved two entries, two more
pages written per message).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('outbox_set', 'outbox', ['set_id', 'id'])
    pending = sa.text("state = 'pending'")
    op.create_index('outbox_pending', 'outbox', ['id'], sqlite_where=pending,
                    postgresql_where=pending)


def downgrade() -> None:
    op.drop_index('outbox_pending', 'outbox')
    op.drop_index('outbox_set', 'outbox')
