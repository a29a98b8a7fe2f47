"""The deliveries lose their index by subscriber (`deliveries_subscriber`).

Why: every delivery a sender records put an entry into it, at a random place, and every
prune took a day's entries out of it, one for each subscriber mailed that day, again at
random places: as the history kept grew to its full length, both touched ever more pages,
and a run cost 20% more after a simulated year than in its first week (issue 11, point 3).
A run now reads what was offered for all its subscribers at once, the deliveries since its
papers were first seen, a range of ids (`Ledger.offers`); `explain` and the count of an
address's hard failures read the same kind of range, and `history --to` the whole history.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('deliveries_subscriber', 'deliveries')


def downgrade() -> None:
    op.create_index('deliveries_subscriber', 'deliveries', ['subscriber', 'sent_at'])
