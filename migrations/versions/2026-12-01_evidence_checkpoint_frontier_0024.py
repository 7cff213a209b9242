"""Each stored checkpoint keeps the compact range of the records it covers.

An export proves a chain's matching records against a checkpoint with a Merkle multiproof,
whose subtrees left of the first matching record are the compact range of the records
before it. It read every leaf hash of the chain from its start (or its pruned prefix) to
build them: with a long chain, unbounded work and memory for a pack of one correlation
id. The compact range of records 1..``tree_size`` (at most 64 subtree roots, 33 bytes each,
as ``evidence_chains.tree`` holds them) is what ingest has at hand when it stores a
checkpoint; an export starts from that of the nearest checkpoint before the first matching
record and reads only the leaves after it. Checkpoints stored before this have none
(NULL): exports over them read from the chain's start as before.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-01 18:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0024'
down_revision: str | None = '0023'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('evidence_checkpoints', sa.Column('frontier', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column('evidence_checkpoints', 'frontier')
