"""What was offered lives in the delivery that offered it: `deliveries.over_cap` holds the
papers offered beside the ones in the email (`included`: the matches over the subscriber's
cap), and the `offers` table, one row per subscriber and paper, is gone.

Why: a sender recorded each message as a delivery plus one offer row per paper, each with an
entry in a unique index; the offers were a third of a sender's store work per message (107
-> 70 us) and the prune's largest delete (about 60,000 rows a day at 10,000
subscribers, scattered over that index). "Was this paper offered to this subscriber" is now
read from the subscriber's deliveries since the paper was first seen, by the existing index
on (subscriber, sent_at).

Offers whose delivery was already pruned (a history shorter than the feed window) cannot be
kept: the prune now keeps deliveries at least as long as the window.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BATCH = 5000


def upgrade() -> None:
    with op.batch_alter_table('deliveries') as batch_op:
        batch_op.add_column(sa.Column('over_cap', sa.Text(), nullable=True))
    joined = ("string_agg(paper_id, ' ' ORDER BY paper_id)"
              if op.get_bind().dialect.name == "postgresql" else "group_concat(paper_id, ' ')")
    for column, flag in (("over_cap", 0), ("included", 1)):
        # `included` has been written with every delivery since 0002, which filled it for
        # the older ones: it is filled again only where it is somehow empty.
        op.execute(f"UPDATE deliveries SET {column} = o.ids FROM (SELECT delivery_id, "
                   f"{joined} AS ids FROM offers WHERE included = {flag} GROUP BY "
                   "delivery_id) AS o WHERE deliveries.id = o.delivery_id"
                   + (" AND deliveries.included IS NULL" if flag else ""))
    op.drop_index('offers_subscriber_paper', 'offers')
    op.drop_table('offers')


def downgrade() -> None:
    op.create_table('offers',
    sa.Column('id', ID, nullable=False),
    sa.Column('subscriber', sa.Text(), nullable=False),
    sa.Column('paper_id', sa.Text(), nullable=False),
    sa.Column('delivery_id', ID, nullable=False),
    sa.Column('included', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('offers_subscriber_paper', 'offers', ['subscriber', 'paper_id'],
                    unique=True)
    # Split in Python: the two engines share no way to turn "a b c" into rows.
    bind = op.get_bind()
    offers = sa.table('offers', sa.column('subscriber'), sa.column('paper_id'),
                      sa.column('delivery_id'), sa.column('included'))
    insert = offers.insert()
    if bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        insert = pg_insert(offers).on_conflict_do_nothing()
    else:
        insert = insert.prefix_with("OR IGNORE")
    rows = bind.execute(sa.text("SELECT id, subscriber, included, over_cap FROM deliveries "
                                "ORDER BY id")).fetchall()
    batch: list[dict[str, object]] = []
    for delivery, subscriber, included, over_cap in rows:
        for flag, ids in ((1, included), (0, over_cap)):
            batch += [{"subscriber": subscriber, "paper_id": p, "delivery_id": delivery,
                       "included": flag} for p in (ids or "").split()]
        if len(batch) >= BATCH:
            bind.execute(insert, batch)
            batch = []
    if batch:
        bind.execute(insert, batch)
    with op.batch_alter_table('deliveries') as batch_op:
        batch_op.drop_column('over_cap')
