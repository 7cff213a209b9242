"""Signing keys get a lifecycle state (active, retiring, revoked) for key rotation.

The ``active`` flag becomes ``state``: a key that was active stays active, one that
was not is revoked (it never signed again). Downgrade keeps only "not revoked".

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 15:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'signing_keys', sa.Column('state', sa.String(16), nullable=False, server_default='active')
    )
    op.add_column('signing_keys', sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE signing_keys SET state = 'revoked', revoked_at = now() WHERE NOT active")
    op.create_check_constraint(
        op.f('ck_signing_keys_state_known'), 'signing_keys', "state IN ('active', 'retiring', 'revoked')"
    )
    op.drop_column('signing_keys', 'active')


def downgrade() -> None:
    op.add_column(
        'signing_keys', sa.Column('active', sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.execute("UPDATE signing_keys SET active = (state <> 'revoked')")
    op.drop_constraint(op.f('ck_signing_keys_state_known'), 'signing_keys', type_='check')
    op.drop_column('signing_keys', 'revoked_at')
    op.drop_column('signing_keys', 'state')
