"""Evidence store: shipped records (partitioned by time), chain heads, alarms, checkpoints;
append-only in the database.

Revision ID: 0012
Revises: 0010
Create Date: 2026-11-29 19:40:00.000000

Append-only is enforced twice:

- Grants: UPDATE, DELETE and TRUNCATE are revoked from PUBLIC and, when the role running the
  migration is not a superuser, from that role too (the table owner, i.e. the application
  role of a deployment whose control plane connects as the owner). An owner could grant them
  back to itself; a superuser ignores grants altogether.
- A trigger on every evidence table raises on UPDATE, DELETE and TRUNCATE (on
  ``evidence_chains``: on DELETE, on TRUNCATE, and on an UPDATE that moves the head back or
  changes the chain's node). Triggers fire for superusers too, so the embedded setup (the
  control plane connects as the ``postgres`` superuser) is covered by the trigger; only
  a superuser who drops the trigger or sets ``session_replication_role = replica`` on
  purpose gets past it, and that is not something the application ever does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = ('evidence_records', 'evidence_alarms', 'evidence_checkpoints')
ALL_TABLES = (*APPEND_ONLY, 'evidence_chains')


def upgrade() -> None:
    op.create_table(
        'evidence_records',
        sa.Column('chain_id', sa.String(length=300), nullable=False),
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
        sa.Column('record_id', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.LargeBinary(), nullable=False),
        sa.Column('prev_hash', sa.LargeBinary(), nullable=False),
        sa.Column('node_id', sa.String(length=256), nullable=False),
        sa.Column('correlation_id', sa.String(length=200), nullable=False),
        sa.Column('tenant_id', sa.String(length=200), nullable=False),
        sa.Column('api_key_id', sa.String(length=200), nullable=False),
        sa.Column('model', sa.String(length=200), nullable=False),
        sa.Column('outcome', sa.String(length=64), nullable=False),
        sa.Column('body', sa.LargeBinary(), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('chain_id', 'seq', 'ts', name=op.f('pk_evidence_records')),
        postgresql_partition_by='RANGE (ts)',
    )
    op.create_index('ix_evidence_records_correlation_id', 'evidence_records', ['correlation_id'])
    op.create_index('ix_evidence_records_tenant_ts', 'evidence_records', ['tenant_id', 'ts'])
    op.create_index('ix_evidence_records_api_key_ts', 'evidence_records', ['api_key_id', 'ts'])
    op.create_index('ix_evidence_records_model_ts', 'evidence_records', ['model', 'ts'])
    op.create_index('ix_evidence_records_outcome_ts', 'evidence_records', ['outcome', 'ts'])
    op.create_index('ix_evidence_records_ts', 'evidence_records', ['ts'])
    # Nothing is ever refused for want of a partition; ingest adds monthly ones ahead.
    op.execute('CREATE TABLE evidence_records_default PARTITION OF evidence_records DEFAULT')

    op.create_table(
        'evidence_chains',
        sa.Column('chain_id', sa.String(length=300), nullable=False),
        sa.Column('node_id', sa.String(length=256), nullable=False),
        sa.Column('head_seq', sa.BigInteger(), nullable=False),
        sa.Column('head_hash', sa.LargeBinary(), nullable=False),
        sa.Column('tree', sa.LargeBinary(), nullable=False),
        sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('state', sa.String(length=64), nullable=False),
        sa.Column('alarm', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('chain_id', name=op.f('pk_evidence_chains')),
    )
    op.create_index(op.f('ix_evidence_chains_node_id'), 'evidence_chains', ['node_id'])

    op.create_table(
        'evidence_alarms',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('chain_id', sa.String(length=300), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('kind', sa.String(length=64), nullable=False),
        sa.Column('expected', sa.Text(), nullable=False),
        sa.Column('arrived', sa.Text(), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_alarms')),
    )
    op.create_index(op.f('ix_evidence_alarms_chain_id'), 'evidence_alarms', ['chain_id'])

    op.create_table(
        'evidence_checkpoints',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('chain_id', sa.String(length=300), nullable=False),
        sa.Column('tree_size', sa.BigInteger(), nullable=False),
        sa.Column('root_hash', sa.LargeBinary(), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('root_matches', sa.Boolean(), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_checkpoints')),
    )
    op.create_index(
        'ix_evidence_checkpoints_chain_id_tree_size', 'evidence_checkpoints', ['chain_id', 'tree_size']
    )

    op.execute(
        """
        CREATE FUNCTION evidence_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'evidence is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION evidence_chain_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.chain_id <> OLD.chain_id OR NEW.node_id <> OLD.node_id THEN
                RAISE EXCEPTION 'evidence is append-only: the chain or node of % cannot change',
                    OLD.chain_id USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF NEW.head_seq < OLD.head_seq THEN
                RAISE EXCEPTION 'evidence is append-only: the head of % cannot move back from % to %',
                    OLD.chain_id, OLD.head_seq, NEW.head_seq USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    for table in APPEND_ONLY:
        op.execute(
            f'CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} '
            'FOR EACH ROW EXECUTE FUNCTION evidence_append_only()'
        )
    for table in (*ALL_TABLES, 'evidence_records_default'):
        op.execute(
            f'CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} '
            'FOR EACH STATEMENT EXECUTE FUNCTION evidence_append_only()'
        )
    op.execute(
        'CREATE TRIGGER evidence_chains_no_delete BEFORE DELETE ON evidence_chains '
        'FOR EACH ROW EXECUTE FUNCTION evidence_append_only()'
    )
    op.execute(
        'CREATE TRIGGER evidence_chains_forward_only BEFORE UPDATE ON evidence_chains '
        'FOR EACH ROW EXECUTE FUNCTION evidence_chain_forward_only()'
    )
    revoked = ', '.join((*APPEND_ONLY, 'evidence_records_default'))
    op.execute(f'REVOKE UPDATE, DELETE, TRUNCATE ON {revoked} FROM PUBLIC')
    op.execute('REVOKE DELETE, TRUNCATE ON evidence_chains FROM PUBLIC')
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON {revoked} FROM ' || quote_ident(current_user);
                EXECUTE 'REVOKE DELETE, TRUNCATE ON evidence_chains FROM ' || quote_ident(current_user);
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    # Dropping is how evidence leaves a database on purpose (retention drops whole
    # partitions); the triggers fire on rows, not on DROP.
    for table in ('evidence_checkpoints', 'evidence_alarms', 'evidence_chains', 'evidence_records'):
        op.execute(f'DROP TABLE {table} CASCADE')
    op.execute('DROP FUNCTION evidence_chain_forward_only()')
    op.execute('DROP FUNCTION evidence_append_only()')
