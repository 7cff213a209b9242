"""``evidence_spend``: nano-USD spent per budget scope and UTC day or month, as shipped
evidence says, counted by ingest in the transaction that stores the records (so each record
counts once); the quota ledger never grants past a budget by it (``controlplane.quota``).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30 05:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0020'
down_revision: str | None = '0019'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'evidence_spend',
        sa.Column('scope', sa.String(96), nullable=False),
        sa.Column('window', sa.String(16), nullable=False),
        sa.Column('nanos', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('scope', 'window', name=op.f('pk_evidence_spend')),
    )


def downgrade() -> None:
    op.drop_table('evidence_spend')
