"""Retention prunes a chain's superseded checkpoints and compact ranges with its records.

A node signs a checkpoint about every second per chain, and ingest stores a compact range
at every 1,024th record: ``evidence_checkpoints`` and ``evidence_frontiers`` grew forever
although retention drops the records they cover. Once a chain's records ``1..L`` are
pruned (its signed statement in ``evidence_pruned_ranges`` carries their compact range and
last hash), nothing reads its checkpoints or compact ranges of sizes below the newest one
at or below L: a later checkpoint is checked from the statement's compact range, an export
proves the remaining records from there, and the newest one at or below L stays (an export
of a chain with no checkpoint above L still names it).

``evidence_prune_superseded(chain_id)`` deletes exactly those rows of one chain (L read
from its newest statement, never given by the caller): checkpoints whose root matched with
a size below the newest matching one at or below L, compact ranges below the newest one at
or below L. A checkpoint whose root did not match (a tamper alarm's signed note) is kept.
It returns how many of each it deleted, or NULLs when its owner has no DELETE on the two
tables (a non-superuser owner, whose DELETE migration 0012 revoked: nothing is deleted).

Append-only stays enforced for every role:

- The row trigger of migrations 0012 and 0027 now refuses UPDATE only; DELETE is checked
  once per statement (with the deleted rows) and refused unless it runs inside
  ``evidence_prune_superseded`` (which sets ``signalbox.evidence_prune`` around its own
  deletes) and every deleted row is superseded as above: a DELETE typed by hand, even by a
  superuser, is refused, and with that setting set by hand (any session can) only rows
  superseded as above go, never one still needed.
- No grant changes: the application role still has no DELETE on any evidence table. The
  function is SECURITY DEFINER with its own search_path and EXECUTE revoked from PUBLIC:
  a deployment whose control plane connects as a non-superuser owner keeps these rows until
  an operator makes the function's owner a role that has DELETE (README, evidence retention).

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-01 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0028'
down_revision: str | None = '0027'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('evidence_checkpoints', 'evidence_frontiers')

STRAYS = {
    'evidence_checkpoints': (
        'SELECT 1 FROM gone WHERE NOT root_matches UNION ALL '
        'SELECT 1 FROM (SELECT chain_id, max(tree_size) AS top FROM gone GROUP BY chain_id) g '
        'WHERE NOT EXISTS (SELECT 1 FROM evidence_checkpoints k WHERE k.chain_id = g.chain_id AND k.root_matches '
        'AND k.tree_size > g.top AND k.tree_size <= '
        '(SELECT max(p.last_seq) FROM evidence_pruned_ranges p WHERE p.chain_id = g.chain_id))'
    ),
    'evidence_frontiers': (
        'SELECT 1 FROM (SELECT chain_id, max(tree_size) AS top FROM gone GROUP BY chain_id) g '
        'WHERE NOT EXISTS (SELECT 1 FROM evidence_frontiers k WHERE k.chain_id = g.chain_id '
        'AND k.tree_size > g.top AND k.tree_size <= '
        '(SELECT max(p.last_seq) FROM evidence_pruned_ranges p WHERE p.chain_id = g.chain_id))'
    ),
}
"""Per table: the deleted rows (``gone``) no pruned range superseded, which the trigger
refuses. A row is superseded when a row of its chain that stays (one still there after the
DELETE) is larger and at or below the chain's last pruned seq: checked for each chain's
largest deleted row, it holds for the smaller ones (one probe per chain, not per row: a
chain's month is some 2.6 million checkpoints)."""


def upgrade() -> None:
    schema = op.get_bind().exec_driver_sql('SELECT quote_ident(current_schema())').scalar_one()
    path = f'pg_catalog, {schema}, pg_temp'
    for table in TABLES:
        op.execute(
            f"""
            CREATE FUNCTION {table}_superseded_only() RETURNS trigger LANGUAGE plpgsql
            SET search_path = {path} AS $$
            BEGIN
                IF current_setting('signalbox.evidence_prune', true) IS DISTINCT FROM 'on' THEN
                    RAISE EXCEPTION 'evidence is append-only: DELETE on {table} is refused (only '
                        'retention deletes what a pruned range superseded)' USING ERRCODE = 'insufficient_privilege';
                END IF;
                IF EXISTS ({STRAYS[table]}) THEN
                    RAISE EXCEPTION 'evidence is append-only: DELETE on {table} of a row no pruned '
                        'range superseded is refused' USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN NULL;
            END $$
            """
        )
        op.execute(f'DROP TRIGGER {table}_append_only ON {table}')
        op.execute(
            f'CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table} '
            'FOR EACH ROW EXECUTE FUNCTION evidence_append_only()'
        )
        op.execute(
            f'CREATE TRIGGER {table}_superseded_only AFTER DELETE ON {table} REFERENCING OLD TABLE AS gone '
            f'FOR EACH STATEMENT EXECUTE FUNCTION {table}_superseded_only()'
        )
    op.execute(
        f"""
        CREATE FUNCTION evidence_prune_superseded(chain text, OUT checkpoints bigint, OUT frontiers bigint)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = {path} AS $$
        DECLARE
            last bigint;
        BEGIN
            IF NOT (has_table_privilege('evidence_checkpoints', 'DELETE')
                    AND has_table_privilege('evidence_frontiers', 'DELETE')) THEN
                RETURN;
            END IF;
            checkpoints := 0;
            frontiers := 0;
            SELECT max(last_seq) INTO last FROM evidence_pruned_ranges WHERE chain_id = chain;
            IF last IS NULL THEN
                RETURN;
            END IF;
            -- For this function's deletes only (an error rolls it back with them).
            PERFORM set_config('signalbox.evidence_prune', 'on', true);
            DELETE FROM evidence_checkpoints WHERE chain_id = chain AND root_matches AND tree_size < (
                SELECT max(tree_size) FROM evidence_checkpoints
                WHERE chain_id = chain AND root_matches AND tree_size <= last);
            GET DIAGNOSTICS checkpoints = ROW_COUNT;
            DELETE FROM evidence_frontiers WHERE chain_id = chain AND tree_size < (
                SELECT max(tree_size) FROM evidence_frontiers WHERE chain_id = chain AND tree_size <= last);
            GET DIAGNOSTICS frontiers = ROW_COUNT;
            PERFORM set_config('signalbox.evidence_prune', 'off', true);
        END $$
        """
    )
    op.execute('REVOKE EXECUTE ON FUNCTION evidence_prune_superseded(text) FROM PUBLIC')


def downgrade() -> None:
    op.execute('DROP FUNCTION evidence_prune_superseded(text)')
    for table in TABLES:
        op.execute(f'DROP TRIGGER {table}_superseded_only ON {table}')
        op.execute(f'DROP TRIGGER {table}_append_only ON {table}')
        op.execute(
            f'CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} '
            'FOR EACH ROW EXECUTE FUNCTION evidence_append_only()'
        )
        op.execute(f'DROP FUNCTION {table}_superseded_only()')
