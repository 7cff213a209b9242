"""Node groups: one control plane, one signed snapshot chain per group.

``node_groups`` holds each group's mode, site, deployment label and what it may see
(NULL: everything). The group ``default`` (cloud, sees everything) is created, and the
snapshots and nodes that exist belong to it, so a deployment from before groups behaves
as it did. ``snapshots`` is keyed by (node_group, version): each group has its own
version chain. Downgrade keeps only the ``default`` chain (the only one a single-scope
control plane can serve) and drops the table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'node_groups',
        sa.Column('name', sa.String(63), nullable=False),
        sa.Column('mode', sa.String(16), nullable=False),
        sa.Column('site', sa.String(200), nullable=False),
        sa.Column('deployment', sa.String(200), nullable=False),
        sa.Column('tenants', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('providers', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('models', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint("mode IN ('cloud', 'on-prem', 'air-gapped')", name=op.f('ck_node_groups_mode_known')),
        sa.CheckConstraint("name ~ '^[a-z0-9-]{1,63}$'", name=op.f('ck_node_groups_name_syntax')),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_node_groups')),
    )
    op.execute("INSERT INTO node_groups (name, mode, site, deployment) VALUES ('default', 'cloud', '', '')")
    op.add_column(
        'snapshots', sa.Column('node_group', sa.String(63), nullable=False, server_default='default')
    )
    op.drop_constraint('pk_snapshots', 'snapshots', type_='primary')
    op.create_primary_key('pk_snapshots', 'snapshots', ['node_group', 'version'])
    op.add_column('nodes', sa.Column('node_group', sa.String(63), nullable=False, server_default='default'))


def downgrade() -> None:
    op.drop_column('nodes', 'node_group')
    op.execute("DELETE FROM snapshots WHERE node_group <> 'default'")
    op.drop_constraint('pk_snapshots', 'snapshots', type_='primary')
    op.create_primary_key('pk_snapshots', 'snapshots', ['version'])
    op.drop_column('snapshots', 'node_group')
    op.drop_table('node_groups')
