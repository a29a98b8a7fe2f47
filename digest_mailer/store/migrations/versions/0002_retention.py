"""Retention: a delivery keeps its papers' ids itself (`deliveries.included`), so the offers
can go with the feed window while `history` keeps what was sent; indexes for pruning by age.
No index on offers.paper_id, outbox.updated_at or deliveries.sent_at: each cost a sender
10-40 us a message. The prune scans offers and outbox, which the window keeps small, once a
run, and bisects the deliveries' ids.

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
    op.create_index('papers_last_seen', 'papers', ['last_seen'])
    if op.get_bind().dialect.name == "postgresql":
        # Deleting a delivery made PostgreSQL look for offers that name it, by a scan (no
        # index on offers.delivery_id: it would cost every message). The prune keeps the
        # reference itself; SQLite keeps the clause and the prune switches its check off.
        op.drop_constraint('offers_delivery_id_fkey', 'offers', type_='foreignkey')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key('offers_delivery_id_fkey', 'offers', 'deliveries',
                              ['delivery_id'], ['id'])
    op.drop_index('papers_last_seen', 'papers')
    with op.batch_alter_table('deliveries') as batch_op:
        batch_op.drop_column('included')
