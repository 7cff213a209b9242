"""Caller identities besides API keys: per-tenant JWT issuers and mTLS URI SAN mappings.

One row per identity in ``tenant_identities``; ``spec`` holds the snapshot message
(public keys and claim names only). An issuer (``iss``) or an exact/prefix URI belongs to
one tenant at most, so a node never has to choose between two.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29 22:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'tenant_identities',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('kind', sa.String(8), nullable=False),
        sa.Column('match', sa.Text(), nullable=False),
        sa.Column('prefix', sa.Boolean(), nullable=False),
        sa.Column('spec', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint("kind IN ('jwt', 'mtls')", name=op.f('ck_tenant_identities_kind_known')),
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'], name=op.f('fk_tenant_identities_tenant_id_tenants'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tenant_identities')),
        sa.UniqueConstraint('kind', 'match', 'prefix', name=op.f('uq_tenant_identities_kind')),
    )
    op.create_index(op.f('ix_tenant_identities_tenant_id'), 'tenant_identities', ['tenant_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_tenant_identities_tenant_id'), table_name='tenant_identities')
    op.drop_table('tenant_identities')
