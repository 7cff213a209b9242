"""Alembic: upgrade from empty, no drift between models and migrations, one head."""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from controlplane.db.migrate import alembic_config, current_revision, heads, upgrade_head
from controlplane.db.models import Base


def test_exactly_one_head() -> None:
    assert len(heads()) == 1


def test_upgrade_head_from_empty_creates_every_table(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None
    upgrade_head(empty_database_url)
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert current_revision(empty_database_url) == heads()[0]


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_upgrade_head_is_idempotent(database_url: str) -> None:
    upgrade_head(database_url)
    assert current_revision(database_url) == heads()[0]


def test_downgrade_to_base_and_back(database_url: str) -> None:
    config = alembic_config(database_url)
    command.downgrade(config, "base")
    assert current_revision(database_url) is None
    upgrade_head(database_url)
    assert current_revision(database_url) == heads()[0]


def test_policies_without_allowed_models_keep_the_models_they_could_reach(empty_database_url: str) -> None:
    # Before 0003 a policy without allowed_models reached the whole registry; since, a
    # policy names what it may use. The upgrade must not change any tenant's routing.
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0002")
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    acme, beta = uuid.uuid4(), uuid.uuid4()
    insert_model = sa.text(
        "INSERT INTO models (id, alias, capabilities, context_window, max_output_tokens, "
        "input_price_nanos_per_mtok, output_price_nanos_per_mtok, cached_input_price_nanos_per_mtok, "
        "certified_for, certifications, typical_latency_ms, attributes) VALUES (:id, :alias, '[]', 0, 0, "
        "0, 0, 0, '[]', '[]', 0, '{}')"
    )
    insert_tenant = sa.text(
        "INSERT INTO tenants (id, name, tier, active, labels) VALUES (:id, :name, '', true, '{}')"
    )
    insert_policy = sa.text(
        "INSERT INTO policies (id, tenant_id, version, document_json, deleted, created_by) "
        "VALUES (:id, :tenant, :version, :doc, false, 'admin:test')"
    )
    try:
        with engine.begin() as conn:
            for alias in ("small", "large"):
                conn.execute(insert_model, {"id": uuid.uuid4(), "alias": alias})
            for tenant, name in ((acme, "acme"), (beta, "beta")):
                conn.execute(insert_tenant, {"id": tenant, "name": name})
            conn.execute(insert_policy, {"id": uuid.uuid4(), "tenant": acme, "version": 1, "doc": "{}"})
            conn.execute(
                insert_policy,
                {"id": uuid.uuid4(), "tenant": acme, "version": 2, "doc": '{"default_model":"small"}'},
            )
            conn.execute(
                insert_policy,
                {"id": uuid.uuid4(), "tenant": beta, "version": 1, "doc": '{"allowed_models":["small"]}'},
            )
        upgrade_head(empty_database_url)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT tenant_id, version, document_json, created_by FROM policies ORDER BY 1, 2")
            ).fetchall()
    finally:
        engine.dispose()
    acme_rows = [r for r in rows if r[0] == acme]
    beta_rows = [r for r in rows if r[0] == beta]
    # acme's newest version lacked allowed_models: a new version lists the whole registry.
    assert [r[1] for r in acme_rows] == [1, 2, 3]
    assert json.loads(acme_rows[-1][2]) == {"default_model": "small", "allowed_models": ["large", "small"]}
    assert acme_rows[-1][3].startswith("migration:0003")
    # beta already named its models: untouched.
    assert [(r[1], r[2]) for r in beta_rows] == [(1, '{"allowed_models":["small"]}')]
