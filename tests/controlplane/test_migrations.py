"""Alembic: upgrade from empty, no drift between models and migrations, one head."""

from __future__ import annotations

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
