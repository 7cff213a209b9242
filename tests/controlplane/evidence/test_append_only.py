"""The evidence tables are append-only in the database itself: the trigger refuses UPDATE,
DELETE and TRUNCATE for every role (the embedded control plane connects as a superuser), and
an owner that is not a superuser has no UPDATE/DELETE privilege on them at all."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from controlplane.db.embedded import EmbeddedPostgres
from tests.fixtures.postgres import migrated_by_owner

SEED = [
    "INSERT INTO evidence_records (chain_id, seq, ts, record_id, hash, prev_hash, node_id, correlation_id, "
    "tenant_id, api_key_id, model, outcome, body) VALUES ('n1/0', 1, now(), 'r1', '\\x01', '\\x00', 'n1', "
    "'c1', 't1', 'k1', 'small', 'OK', '\\x7b7d')",
    "INSERT INTO evidence_chains (chain_id, node_id, head_seq, head_hash, tree, state, alarm) "
    "VALUES ('n1/0', 'n1', 1, '\\x01', '', 'ok', '')",
    "INSERT INTO evidence_alarms (chain_id, seq, kind, expected, arrived, detail) "
    "VALUES ('n1/0', 1, 'tamper', 'aa', 'bb', '')",
    "INSERT INTO evidence_checkpoints (chain_id, tree_size, root_hash, note, root_matches) "
    "VALUES ('n1/0', 1, '\\x01', 'note', true)",
    "INSERT INTO evidence_frontiers (chain_id, tree_size, frontier) VALUES ('n1/0', 1, '\\x01')",
]

REFUSED = [
    ("UPDATE evidence_records SET outcome = 'X'", "UPDATE on evidence_records"),
    ("DELETE FROM evidence_records", "DELETE on evidence_records"),
    ("UPDATE evidence_records_default SET outcome = 'X'", "UPDATE on evidence_records_default"),
    ("DELETE FROM evidence_records_default", "DELETE on evidence_records_default"),
    ("TRUNCATE evidence_records", "TRUNCATE on evidence_records"),
    ("TRUNCATE evidence_records_default", "TRUNCATE on evidence_records_default"),
    ("UPDATE evidence_alarms SET detail = 'x'", "UPDATE on evidence_alarms"),
    ("DELETE FROM evidence_alarms", "DELETE on evidence_alarms"),
    ("TRUNCATE evidence_alarms", "TRUNCATE on evidence_alarms"),
    ("UPDATE evidence_checkpoints SET note = 'x'", "UPDATE on evidence_checkpoints"),
    ("DELETE FROM evidence_checkpoints", "DELETE on evidence_checkpoints"),
    ("TRUNCATE evidence_checkpoints", "TRUNCATE on evidence_checkpoints"),
    ("UPDATE evidence_frontiers SET frontier = '\\x02'", "UPDATE on evidence_frontiers"),
    ("DELETE FROM evidence_frontiers", "DELETE on evidence_frontiers"),
    ("TRUNCATE evidence_frontiers", "TRUNCATE on evidence_frontiers"),
    ("DELETE FROM evidence_chains", "DELETE on evidence_chains"),
    ("TRUNCATE evidence_chains", "TRUNCATE on evidence_chains"),
    ("UPDATE evidence_chains SET head_seq = 0", "the head of n1/0 cannot move back from 1 to 0"),
    ("UPDATE evidence_chains SET node_id = 'n2'", "the chain or node of n1/0 cannot change"),
]


def _seed(url: str) -> sa.Engine:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        for sql in SEED:
            conn.exec_driver_sql(sql)
    return engine


@pytest.mark.parametrize(("sql", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_trigger_refuses_changes_even_to_a_superuser(database_url: str, sql: str, message: str) -> None:
    engine = _seed(database_url)
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").scalar()
        with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
            conn.exec_driver_sql(sql)
        assert f"evidence is append-only: {message}" in str(refused.value)
        with engine.connect() as conn:
            counts = [
                conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
                for t in (
                    "evidence_records",
                    "evidence_chains",
                    "evidence_alarms",
                    "evidence_checkpoints",
                    "evidence_frontiers",
                )
            ]
        assert counts == [1, 1, 1, 1, 1]
    finally:
        engine.dispose()


def test_the_head_still_moves_forward(database_url: str) -> None:
    engine = _seed(database_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE evidence_chains SET head_seq = 2, state = 'gap' WHERE chain_id = 'n1/0'"
            )
            assert conn.exec_driver_sql("SELECT head_seq FROM evidence_chains").scalar() == 2
    finally:
        engine.dispose()


def test_an_owner_that_is_not_superuser_has_no_update_or_delete_grant(
    postgres_server: EmbeddedPostgres,
) -> None:
    with migrated_by_owner(postgres_server, "evidence_app") as url:
        engine = _seed(url)
        try:
            for table in (
                "evidence_records",
                "evidence_records_default",
                "evidence_alarms",
                "evidence_checkpoints",
                "evidence_frontiers",
            ):
                for sql in (
                    f"UPDATE {table} SET chain_id = chain_id",
                    f"DELETE FROM {table}",
                    f"TRUNCATE {table}",
                ):
                    with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
                        conn.exec_driver_sql(sql)
                    assert f"permission denied for table {table}" in str(refused.value), sql
            with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM evidence_chains")
            assert "permission denied for table evidence_chains" in str(refused.value)
        finally:
            engine.dispose()
