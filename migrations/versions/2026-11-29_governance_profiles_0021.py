"""``governance_profiles``: versions of each tenant's governance profile and of the platform
default (tenant_id NULL), append-only as ``policies`` are: the newest version wins, a deletion
is a version of its own.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30 06:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0021'
down_revision: str | None = '0020'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'governance_profiles',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=True),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('document_json', sa.Text(), nullable=False),
        sa.Column('deleted', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ['tenant_id'],
            ['tenants.id'],
            name=op.f('fk_governance_profiles_tenant_id_tenants'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_governance_profiles')),
        sa.UniqueConstraint(
            'tenant_id',
            'version',
            name=op.f('uq_governance_profiles_tenant_id'),
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_index(
        op.f('ix_governance_profiles_tenant_id'), 'governance_profiles', ['tenant_id'], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f('ix_governance_profiles_tenant_id'), table_name='governance_profiles')
    op.drop_table('governance_profiles')
