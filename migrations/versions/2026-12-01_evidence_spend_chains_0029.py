"""``evidence_spend`` per evidence chain: the spend each node worker's shipped records say, so
the quota ledger counts each worker's budget spend once, the larger of its leases' count and
its evidence (``controlplane.evidence.spend``). Rows from before (``chain_id`` empty) are
spend of no known worker: a floor under the whole budget, as they were.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-01 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "evidence_spend", sa.Column("chain_id", sa.String(300), server_default=sa.text("''"), nullable=False)
    )
    op.drop_constraint("pk_evidence_spend", "evidence_spend", type_="primary")
    op.create_primary_key("pk_evidence_spend", "evidence_spend", ["scope", "window", "chain_id"])


def downgrade() -> None:
    # One row per (scope, window) again: the chains' spend summed.
    op.execute(
        'CREATE TEMPORARY TABLE evidence_spend_sum ON COMMIT DROP AS SELECT scope, "window",'
        " LEAST(SUM(nanos), 9223372036854775807)::bigint AS nanos, MAX(updated_at) AS updated_at"
        ' FROM evidence_spend GROUP BY scope, "window"'
    )
    op.execute("DELETE FROM evidence_spend")
    op.drop_constraint("pk_evidence_spend", "evidence_spend", type_="primary")
    op.drop_column("evidence_spend", "chain_id")
    op.create_primary_key("pk_evidence_spend", "evidence_spend", ["scope", "window"])
    op.execute(
        'INSERT INTO evidence_spend (scope, "window", nanos, updated_at)'
        ' SELECT scope, "window", nanos, updated_at FROM evidence_spend_sum'
    )
