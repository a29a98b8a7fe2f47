"""Self-service subscribers (store/selfservice.py): the store's subscribers and the config
subscribers' own overrides, pending sign-ups, the web pages' rate-limit counters, and the
revision that tells watchers the subscribers changed.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ss_subscribers',
    sa.Column('email_key', sa.String(320), nullable=False),
    sa.Column('email', sa.String(320), nullable=False),
    sa.Column('kind', sa.String(10), nullable=False),
    sa.Column('origin', sa.String(10), nullable=False),
    sa.Column('name', sa.String(200), server_default='', nullable=False),
    sa.Column('topics', sa.Text(), server_default='', nullable=False),
    sa.Column('exclude', sa.Text(), server_default='', nullable=False),
    sa.Column('authors', sa.Text(), server_default='', nullable=False),
    sa.Column('min_upvotes', sa.Integer(), server_default='0', nullable=False),
    sa.Column('max_papers', sa.Integer(), nullable=True),
    sa.Column('frequency', sa.String(10), server_default='daily', nullable=False),
    sa.Column('weekday', sa.Integer(), server_default='0', nullable=False),
    sa.Column('paused', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('email_key')
    )
    op.create_table('ss_signups',
    sa.Column('email_key', sa.String(320), nullable=False),
    sa.Column('email', sa.String(320), nullable=False),
    sa.Column('prefs', sa.Text(), nullable=False),
    sa.Column('nonce', sa.String(32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('mailed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('email_key')
    )
    op.create_index('ss_signups_created', 'ss_signups', ['created_at'])
    op.create_table('ss_rate_limits',
    sa.Column('bucket', sa.String(40), nullable=False),
    sa.Column('subject', sa.String(64), nullable=False),
    sa.Column('window_start', sa.BigInteger(), nullable=False),
    sa.Column('hits', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('bucket', 'subject')
    )
    op.create_table('ss_meta',
    sa.Column('name', sa.String(40), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('ss_meta')
    op.drop_table('ss_rate_limits')
    op.drop_index('ss_signups_created', 'ss_signups')
    op.drop_table('ss_signups')
    op.drop_table('ss_subscribers')
