"""Rate limits and budgets: ``limits`` of tenants and API keys, and ``quota_state``, what the
control plane has leased to nodes per limit and window (a rate's bucket level, a budget's
nano-USD spent or held in a UTC day or month).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('tenants', sa.Column('limits', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('api_keys', sa.Column('limits', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.create_table(
        'quota_state',
        sa.Column('scope', sa.String(96), nullable=False),
        sa.Column('window', sa.String(16), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('level', sa.Float(), nullable=False),
        sa.Column('used', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column(
            'holders', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'], name=op.f('fk_quota_state_tenant_id_tenants'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('scope', 'window', name=op.f('pk_quota_state')),
    )
    op.create_index(op.f('ix_quota_state_tenant_id'), 'quota_state', ['tenant_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_quota_state_tenant_id'), table_name='quota_state')
    op.drop_table('quota_state')
    op.drop_column('api_keys', 'limits')
    op.drop_column('tenants', 'limits')
