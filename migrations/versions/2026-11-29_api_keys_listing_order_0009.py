"""An index in the snapshot's API key order (created_at, id): every publish lists all keys.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 18:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_api_keys_created_at_id', 'api_keys', ['created_at', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_api_keys_created_at_id', table_name='api_keys')
