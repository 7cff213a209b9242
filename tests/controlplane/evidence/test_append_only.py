"""The evidence tables are append-only in the database itself: the trigger refuses UPDATE,
DELETE and TRUNCATE for every role (the embedded control plane connects as a superuser), and
an owner that is not a superuser has no UPDATE/DELETE privilege on them at all. The one
DELETE let through is ``evidence_prune_superseded``'s (migration 0028), of checkpoints and
compact ranges a pruned range superseded only."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

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


def _seed(url: str, seed: list[str] = SEED) -> sa.Engine:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        for sql in seed:
            conn.exec_driver_sql(sql)
    return engine


def assert_owner_refused(engine: sa.Engine, tables: list[str]) -> None:
    """``engine``'s role (a non-superuser owner) may not UPDATE, DELETE or TRUNCATE ``tables``,
    nor lock them in a mode that needs those privileges (SHARE, the weakest that blocks
    writes: retention locks by ``ALTER TABLE`` instead, which needs ownership only)."""
    for table in tables:
        for sql in (
            f"UPDATE {table} SET chain_id = chain_id",
            f"DELETE FROM {table}",
            f"TRUNCATE {table}",
            f"LOCK TABLE {table} IN SHARE MODE",
        ):
            with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
                conn.exec_driver_sql(sql)
            assert f"permission denied for table {table}" in str(refused.value), sql


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
            assert_owner_refused(
                engine,
                [
                    "evidence_records",
                    "evidence_records_default",
                    "evidence_alarms",
                    "evidence_checkpoints",
                    "evidence_frontiers",
                ],
            )
            with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM evidence_chains")
            assert "permission denied for table evidence_chains" in str(refused.value)
        finally:
            engine.dispose()


PRUNED = [
    # Records 1..10 of n1/0 pruned; checkpoints of sizes 2, 6, 8, 12 matched and 4 did not
    # (an alarm's signed note); compact ranges at 3, 5, 11.
    "INSERT INTO evidence_pruned_ranges (chain_id, first_seq, last_seq, last_hash, pruned_before, statement) "
    "VALUES ('n1/0', 1, 10, '\\x0a', now(), '\\x7b7d')",
    *(
        "INSERT INTO evidence_checkpoints (chain_id, tree_size, root_hash, note, root_matches) "
        f"VALUES ('n1/0', {size}, '\\x01', 'note', {str(size != 4).lower()})"
        for size in (2, 4, 6, 8, 12)
    ),
    *(
        f"INSERT INTO evidence_frontiers (chain_id, tree_size, frontier) VALUES ('n1/0', {size}, '\\x01')"
        for size in (3, 5, 11)
    ),
    # Another chain, nothing of it pruned: nothing of it goes.
    "INSERT INTO evidence_checkpoints (chain_id, tree_size, root_hash, note, root_matches) "
    "VALUES ('n2/0', 1, '\\x01', 'note', true)",
    "INSERT INTO evidence_checkpoints (chain_id, tree_size, root_hash, note, root_matches) "
    "VALUES ('n2/0', 2, '\\x01', 'note', true)",
]

PRUNE = "SELECT * FROM evidence_prune_superseded('{}')"


def _sizes(engine: sa.Engine) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            [
                (c, int(n))
                for c, n in conn.exec_driver_sql(f"SELECT chain_id, tree_size FROM {t} ORDER BY 1, 2")
            ]
            for t in ("evidence_checkpoints", "evidence_frontiers")
        )


SEEDED = ([("n1/0", 2), ("n1/0", 4), ("n1/0", 6), ("n1/0", 8), ("n1/0", 12), ("n2/0", 1), ("n2/0", 2)],
          [("n1/0", 3), ("n1/0", 5), ("n1/0", 11)])  # fmt: skip
PRUNED_SIZES = (
    [("n1/0", 4), ("n1/0", 8), ("n1/0", 12), ("n2/0", 1), ("n2/0", 2)],
    [("n1/0", 5), ("n1/0", 11)],
)


def test_only_retention_deletes_and_only_what_a_pruned_range_superseded(database_url: str) -> None:
    engine = _seed(database_url, PRUNED)
    try:
        for sql, message in [
            # By hand, even a superseded row, even a superuser's: refused.
            (
                "DELETE FROM evidence_checkpoints WHERE tree_size = 2",
                "DELETE on evidence_checkpoints is refused",
            ),
            ("DELETE FROM evidence_frontiers WHERE tree_size = 3", "DELETE on evidence_frontiers is refused"),
            # The function's flag set by hand: still only superseded rows.
            *(
                (
                    f"SELECT set_config('signalbox.evidence_prune', 'on', true); DELETE FROM {table} WHERE {where}",
                    f"DELETE on {table} of a row no pruned range superseded is refused",
                )
                for table, where in [
                    ("evidence_checkpoints", "chain_id = 'n1/0' AND tree_size = 8"),  # newest at or below 10
                    ("evidence_checkpoints", "chain_id = 'n1/0' AND tree_size IN (2, 6, 8)"),  # with it
                    ("evidence_checkpoints", "chain_id = 'n1/0' AND tree_size = 12"),  # above 10
                    ("evidence_checkpoints", "chain_id = 'n1/0' AND tree_size = 4"),  # did not match
                    ("evidence_checkpoints", "chain_id = 'n2/0' AND tree_size = 1"),  # nothing pruned
                    ("evidence_frontiers", "tree_size = 5"),
                    ("evidence_frontiers", "tree_size IN (3, 5)"),
                    ("evidence_frontiers", "tree_size = 11"),
                ]
            ),
        ]:
            with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
                conn.exec_driver_sql(sql)
            assert f"evidence is append-only: {message}" in str(refused.value), sql
        assert _sizes(engine) == SEEDED
        with engine.begin() as conn:
            assert conn.exec_driver_sql(PRUNE.format("n1/0")).one() == (2, 1)
            assert conn.exec_driver_sql(PRUNE.format("n2/0")).one() == (0, 0)
            # Its flag does not outlive it.
            with pytest.raises(sa.exc.ProgrammingError), conn.begin_nested():
                conn.exec_driver_sql("DELETE FROM evidence_checkpoints WHERE tree_size = 8")
        assert _sizes(engine) == PRUNED_SIZES
        with engine.begin() as conn:
            assert conn.exec_driver_sql(PRUNE.format("n1/0")).one() == (0, 0)
        assert _sizes(engine) == PRUNED_SIZES
    finally:
        engine.dispose()


def test_a_non_superuser_owner_still_cannot_delete_and_prunes_through_a_role_that_can(
    postgres_server: EmbeddedPostgres,
) -> None:
    with migrated_by_owner(postgres_server, "evidence_app") as url:
        engine = _seed(url, PRUNED)
        app = make_url(url)
        admin = sa.create_engine(postgres_server.url(app.database or ""), poolclass=sa.NullPool)
        pruner = f"{app.username}_pruner"
        try:
            # Its own function runs with its own privileges: no DELETE, nothing deleted.
            with engine.begin() as conn:
                assert conn.exec_driver_sql(PRUNE.format("n1/0")).one() == (None, None)
            assert _sizes(engine) == SEEDED
            # The operator's way (README): a role with DELETE owns the function.
            with admin.begin() as conn:
                for sql in (
                    f"CREATE ROLE {pruner} NOLOGIN",
                    f"GRANT SELECT, DELETE ON evidence_checkpoints, evidence_frontiers TO {pruner}",
                    f"GRANT SELECT ON evidence_pruned_ranges TO {pruner}",
                    f"ALTER FUNCTION evidence_prune_superseded(text) OWNER TO {pruner}",
                    f"GRANT EXECUTE ON FUNCTION evidence_prune_superseded(text) TO {app.username}",
                ):
                    conn.exec_driver_sql(sql)
            with engine.begin() as conn:
                assert conn.exec_driver_sql(PRUNE.format("n1/0")).one() == (2, 1)
            assert _sizes(engine) == PRUNED_SIZES
            for table in ("evidence_checkpoints", "evidence_frontiers"):
                with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
                    conn.exec_driver_sql(f"DELETE FROM {table} WHERE tree_size = 12")
                assert f"permission denied for table {table}" in str(refused.value)
            assert _sizes(engine) == PRUNED_SIZES
        finally:
            engine.dispose()
            with admin.begin() as conn:
                if conn.exec_driver_sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{pruner}'").first():
                    conn.exec_driver_sql(f"DROP OWNED BY {pruner}")
                    conn.exec_driver_sql(f"DROP ROLE {pruner}")
            admin.dispose()
