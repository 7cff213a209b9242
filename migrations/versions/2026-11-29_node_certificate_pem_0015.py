"""Node certificates keep their PEM: an evidence pack carries every certificate of a node
whose checkpoints it holds, so a verifier with only the control plane's key can check them.

Certificates issued before this revision have an empty PEM (they were never stored); a pack
then names the chain whose checkpoint no certificate in it verifies.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 21:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'node_certificates', sa.Column('certificate_pem', sa.Text(), server_default='', nullable=False)
    )


def downgrade() -> None:
    op.drop_column('node_certificates', 'certificate_pem')
