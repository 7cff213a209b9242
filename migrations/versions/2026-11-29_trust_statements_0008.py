"""Trust statements: a signed list of every signing key and its state, per rotation/revocation.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 16:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'trust_statements',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('envelope', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_trust_statements')),
    )


def downgrade() -> None:
    op.drop_table('trust_statements')
