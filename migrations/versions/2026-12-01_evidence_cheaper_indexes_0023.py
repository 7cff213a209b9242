"""Two of ``evidence_records``' indexes made cheaper to keep, for the same queries.

Every shipped record is COPYed into all of the table's indexes, and each costs PostgreSQL
CPU per row (measured one at a time on 30,000 real rows, PostgreSQL's own CPU, 2026-12-01:
no index 7.0 us a row; ``(outcome, ts)`` +3.7 us, the dearest of all; a btree on
``correlation_id`` +2.3 us, a hash index +1.3 us):

- ``(outcome, ts)`` becomes a partial index of the records that were not served
  (``outcome <> 'OK'``). Almost every record is ``OK``, and those all land in one key range
  in the middle of the tree: every insert descends to it and splits its pages. A query for
  refusals of one kind uses the partial index (``outcome = 'X'`` implies ``outcome <> 'OK'``);
  one for ``OK`` matches most rows of any time range and reads them by ``ts``.
- ``correlation_id`` is only ever looked up by equality (a query's filter, an export's
  ``--correlation-id``): a hash index answers that and is cheaper to insert into than a
  btree over random strings.

Building them takes a lock on every monthly partition that pauses ingest until the upgrade
commits (5 s per million stored records here, 1.1 KB each): nodes keep their records
spooled meanwhile and ship them after, as when the control plane is down.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01 04:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0023'
down_revision: str | None = '0022'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index('ix_evidence_records_outcome_ts', table_name='evidence_records')
    op.create_index(
        'ix_evidence_records_refused_ts',
        'evidence_records',
        ['outcome', 'ts'],
        postgresql_where="outcome <> 'OK'",
    )
    op.drop_index('ix_evidence_records_correlation_id', table_name='evidence_records')
    op.create_index(
        'ix_evidence_records_correlation_id',
        'evidence_records',
        ['correlation_id'],
        postgresql_using='hash',
    )


def downgrade() -> None:
    op.drop_index('ix_evidence_records_correlation_id', table_name='evidence_records')
    op.create_index('ix_evidence_records_correlation_id', 'evidence_records', ['correlation_id'])
    op.drop_index('ix_evidence_records_refused_ts', table_name='evidence_records')
    op.create_index('ix_evidence_records_outcome_ts', 'evidence_records', ['outcome', 'ts'])
