"""``evidence_frontiers``: a chain's compact range at every 1,024th record.

A checkpoint note of a size not in the batch that brings it (a note signed after its
records were shipped, an older one a restarted shipper offers) is checked against the
root of the stored records 1..size. That root was computed from every leaf hash of the
chain from its start (or its pruned prefix): work and memory per note that grew with the
chain. Ingest now stores the compact range of the records at every record whose seq is a
multiple of 1,024 (``controlplane.evidence.tree.FRONTIER_EVERY``; at most 64 subtree roots
of 33 bytes, as ``evidence_chains.tree`` holds them), and such a note is checked from the
nearest one before its size (or the nearest checkpoint's, migration 0024), reading fewer
than 1,024 leaf hashes. Chains stored before this have none until they reach their next
multiple: their older notes are checked from the start as before.

Append-only like the checkpoints (a changed compact range would make the root a note is
checked against): the trigger and grants of migration 0012.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-01 18:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0027'
down_revision: str | None = '0026'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'evidence_frontiers',
        sa.Column('chain_id', sa.String(length=300), nullable=False),
        sa.Column('tree_size', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('frontier', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('chain_id', 'tree_size', name=op.f('pk_evidence_frontiers')),
    )
    op.execute(
        'CREATE TRIGGER evidence_frontiers_append_only BEFORE UPDATE OR DELETE ON evidence_frontiers '
        'FOR EACH ROW EXECUTE FUNCTION evidence_append_only()'
    )
    op.execute(
        'CREATE TRIGGER evidence_frontiers_no_truncate BEFORE TRUNCATE ON evidence_frontiers '
        'FOR EACH STATEMENT EXECUTE FUNCTION evidence_append_only()'
    )
    op.execute('REVOKE UPDATE, DELETE, TRUNCATE ON evidence_frontiers FROM PUBLIC')
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON evidence_frontiers FROM ' || quote_ident(current_user);
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    op.drop_table('evidence_frontiers')
