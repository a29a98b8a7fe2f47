"""Retention: a delivery keeps its papers' ids itself (`deliveries.included`), so the offers
can go with the feed window while `history` keeps what was sent; indexes for pruning by age.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries') as batch_op:
        batch_op.add_column(sa.Column('included', sa.Text(), nullable=True))
    joined = ("string_agg(o.paper_id, ' ' ORDER BY o.paper_id)"
              if op.get_bind().dialect.name == "postgresql" else "group_concat(o.paper_id, ' ')")
    op.execute(f"UPDATE deliveries SET included = (SELECT {joined} FROM offers o "
               "WHERE o.delivery_id = deliveries.id AND o.included = 1)")
    op.create_index('deliveries_sent_at', 'deliveries', ['sent_at'])
    op.create_index('offers_paper', 'offers', ['paper_id'])
    op.create_index('papers_last_seen', 'papers', ['last_seen'])
    op.create_index('outbox_updated', 'outbox', ['updated_at'])


def downgrade() -> None:
    op.drop_index('outbox_updated', 'outbox')
    op.drop_index('papers_last_seen', 'papers')
    op.drop_index('offers_paper', 'offers')
    op.drop_index('deliveries_sent_at', 'deliveries')
    with op.batch_alter_table('deliveries') as batch_op:
        batch_op.drop_column('included')
