"""Per-tenant evidence settings: what a tenant's records carry, and what its requests get
while a node's evidence spool is full.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 22:00:00.000000

``evidence_content``: ``digest`` (SHA-256 digests only, the default) or ``full`` (the
request's messages and the answer's text too, capped per record). ``evidence_spool_full``:
``serve_and_alarm`` (the default) or ``refuse``. Existing tenants get the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'tenants',
        sa.Column('evidence_content', sa.String(16), nullable=False, server_default='digest'),
    )
    op.add_column(
        'tenants',
        sa.Column('evidence_spool_full', sa.String(16), nullable=False, server_default='serve_and_alarm'),
    )
    op.create_check_constraint(
        'ck_tenants_evidence_content', 'tenants', "evidence_content IN ('digest', 'full')"
    )
    op.create_check_constraint(
        'ck_tenants_evidence_spool_full', 'tenants', "evidence_spool_full IN ('serve_and_alarm', 'refuse')"
    )


def downgrade() -> None:
    op.drop_constraint('ck_tenants_evidence_spool_full', 'tenants', type_='check')
    op.drop_constraint('ck_tenants_evidence_content', 'tenants', type_='check')
    op.drop_column('tenants', 'evidence_spool_full')
    op.drop_column('tenants', 'evidence_content')
