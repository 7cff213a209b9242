"""Evidence retention: a signed statement per chain for each range of records pruned.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 22:00:00.000000

Dropping a monthly partition of ``evidence_records`` is the only way records leave the store
(``controlplane.evidence.retention``); before it, in the same transaction, a statement per
chain is written here. The table is append-only exactly as those of 0012: UPDATE, DELETE and
TRUNCATE revoked (from the migrating role too unless it is a superuser) and refused by
triggers.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = 'evidence_pruned_ranges'


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('chain_id', sa.String(length=300), nullable=False),
        sa.Column('first_seq', sa.BigInteger(), nullable=False),
        sa.Column('last_seq', sa.BigInteger(), nullable=False),
        sa.Column('last_hash', sa.LargeBinary(), nullable=False),
        sa.Column('pruned_before', sa.DateTime(timezone=True), nullable=False),
        sa.Column('statement', sa.LargeBinary(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_pruned_ranges')),
    )
    op.create_index('ix_evidence_pruned_ranges_chain_id_last_seq', TABLE, ['chain_id', 'last_seq'])
    op.execute(
        f'CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} '
        'FOR EACH ROW EXECUTE FUNCTION evidence_append_only()'
    )
    op.execute(
        f'CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} '
        'FOR EACH STATEMENT EXECUTE FUNCTION evidence_append_only()'
    )
    op.execute(f'REVOKE UPDATE, DELETE, TRUNCATE ON {TABLE} FROM PUBLIC')
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON {TABLE} FROM ' || quote_ident(current_user);
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(f'DROP TABLE {TABLE}')
