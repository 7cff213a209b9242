"""The admin audit trail is append-only in the database itself, as the evidence tables are:
the trigger refuses UPDATE, DELETE and TRUNCATE for every role (the embedded control plane
connects as a superuser), and an owner that is not a superuser has no such grant at all."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from controlplane.db.embedded import EmbeddedPostgres
from tests.fixtures.postgres import migrated_by_owner

SEED = "INSERT INTO audit_log (actor, method, target, result, detail) VALUES ('admin:a', 'ListTenants', '', 'OK', '')"
REFUSED = ["UPDATE audit_log SET result = 'OK'", "DELETE FROM audit_log", "TRUNCATE audit_log"]


def _seed(url: str) -> sa.Engine:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(SEED)
    return engine


@pytest.mark.parametrize("sql", REFUSED)
def test_the_trigger_refuses_changes_even_to_a_superuser(database_url: str, sql: str) -> None:
    engine = _seed(database_url)
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").scalar()
        with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
            conn.exec_driver_sql(sql)
        assert f"the admin audit log is append-only: {sql.split()[0]} is refused" in str(refused.value)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM audit_log").scalar() == 1
    finally:
        engine.dispose()


def test_an_owner_that_is_not_superuser_may_insert_and_read_but_has_no_update_or_delete_grant(
    postgres_server: EmbeddedPostgres,
) -> None:
    with migrated_by_owner(postgres_server, "audit_app") as url:
        engine = _seed(url)
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM audit_log").scalar() == 1
            for sql in REFUSED:
                with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
                    conn.exec_driver_sql(sql)
                assert "permission denied for table audit_log" in str(refused.value), sql
        finally:
            engine.dispose()
