"""Admin token roles: "admin" may change config, "viewer" may only read.

Existing tokens become "admin", which is what they could do before.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 08:41:53.051365
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('admin_tokens', sa.Column('role', sa.String(length=32), server_default='admin', nullable=False))
    op.create_check_constraint(op.f('ck_admin_tokens_role_known'), 'admin_tokens', "role IN ('admin', 'viewer')")


def downgrade() -> None:
    op.drop_constraint(op.f('ck_admin_tokens_role_known'), 'admin_tokens', type_='check')
    op.drop_column('admin_tokens', 'role')
