"""Snapshot deltas: each stored snapshot keeps the delta from its group's previous version,
and envelopes are stored uncompressed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 19:10:00.000000

A node that runs the previous version gets the new one as that delta (kilobytes) instead
of the whole envelope (megabytes at fleet size). Envelopes are mostly hashes and ids that
do not compress: EXTERNAL storage skips the attempt (out-of-line, uncompressed), which at
7.9 MB per envelope was a large part of storing one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('snapshots', sa.Column('delta', sa.LargeBinary(), nullable=True))
    op.execute('ALTER TABLE snapshots ALTER COLUMN envelope SET STORAGE EXTERNAL')


def downgrade() -> None:
    op.execute('ALTER TABLE snapshots ALTER COLUMN envelope SET STORAGE EXTENDED')
    op.drop_column('snapshots', 'delta')
