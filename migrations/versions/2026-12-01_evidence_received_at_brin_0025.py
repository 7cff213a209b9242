"""A BRIN index on ``evidence_records.received_at``: retention finds a month's recent receipts.

Retention keeps a monthly partition while it holds a record received after the cut-off
(a node whose clock is behind files records in past months); it asks each candidate
partition whether it holds one, every round of the timer. Without an index that is a scan
of the whole month, and records received late sit at the end of its heap. Records are
appended in the order they are received, so a BRIN index (a few pages per partition, next
to nothing per insert, unlike a btree) answers it by reading only the block ranges that
can hold them.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-01 18:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0025'
down_revision: str | None = '0024'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        'ix_evidence_records_received_at', 'evidence_records', ['received_at'], postgresql_using='brin'
    )


def downgrade() -> None:
    op.drop_index('ix_evidence_records_received_at', table_name='evidence_records')
