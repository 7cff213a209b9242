"""An index on ``nodes.mode``: ExplainRoute finds the mode the whole fleet declares.

ExplainRoute without a mode or node group decides as the fleet's nodes would: in the mode
every registered node declares (cloud when they differ). It read every node row to find
that, on each call: work per admin call that grew with the fleet. With this index, the
smallest and largest declared mode are two reads of its ends, however many nodes there
are. Nodes change their mode only when they reconnect, so their heartbeats stay HOT
updates.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-01 18:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0026'
down_revision: str | None = '0025'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_nodes_mode', 'nodes', ['mode'])


def downgrade() -> None:
    op.drop_index('ix_nodes_mode', table_name='nodes')
