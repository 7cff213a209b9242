"""Alembic: upgrade from empty, no drift between models and migrations, one head."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from controlplane.db.migrate import alembic_config, current_revision, heads, upgrade_head
from controlplane.db.models import Base, Snapshot, include_object
from signalbox.api.config.v1 import snapshot_pb2


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
                conn,
                opts={"compare_type": True, "compare_server_default": True, "include_object": include_object},
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


def test_snapshots_stored_twice_become_their_envelope_and_stay_readable(empty_database_url: str) -> None:
    # Before 0004 each version kept its payload and the envelope holding the same bytes.
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0003")
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    payload = snapshot_pb2.Snapshot(
        version=1, tenants=[snapshot_pb2.Tenant(id="t", name="acme")]
    ).SerializeToString()
    envelope = snapshot_pb2.SignedEnvelope(payload=payload).SerializeToString()
    insert = sa.text(
        "INSERT INTO snapshots (version, payload, envelope, sha256, previous_hash, signing_key_id, "
        "created_at, created_by, reason) VALUES (:v, :p, :e, :h, '', 'k', now(), 'admin:x', 'r')"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"v": 1, "p": payload, "e": envelope, "h": hashlib.sha256(payload).digest()})
        upgrade_head(empty_database_url)
        with Session(engine) as session:
            row = session.get(Snapshot, ("default", 1))  # 0007: existing versions are the default group's
            assert row is not None
            assert row.payload == payload
            assert row.exported_at is None
        # And back: the column is filled again from the envelope.
        command.downgrade(config, "0003")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT payload FROM snapshots")).scalar_one() == payload
    finally:
        engine.dispose()


def test_a_snapshot_whose_envelope_lost_its_payload_stops_the_upgrade(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0003")
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO snapshots (version, payload, envelope, sha256, previous_hash, signing_key_id, "
                    "created_at, created_by, reason) VALUES (7, 'abc', '', 'h', '', 'k', now(), '', '')"
                )
            )
        with pytest.raises(RuntimeError, match="snapshot v7"):
            upgrade_head(empty_database_url)
        assert current_revision(empty_database_url) == "0003"
    finally:
        engine.dispose()


def test_signing_keys_keep_their_meaning_across_0005(empty_database_url: str) -> None:
    # The active flag becomes a state: active stays active, inactive never signs again.
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0004")
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    insert = sa.text(
        "INSERT INTO signing_keys (id, key_id, public_key, encrypted_private_key, kek_id, active) "
        "VALUES (:id, :key_id, '\\x00', '\\x00', 'k', :active)"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"id": uuid.uuid4(), "key_id": "on", "active": True})
            conn.execute(insert, {"id": uuid.uuid4(), "key_id": "off", "active": False})
        upgrade_head(empty_database_url)
        with engine.connect() as conn:
            states = {
                kid: (state, revoked_at is not None)
                for kid, state, revoked_at in conn.execute(
                    sa.text("SELECT key_id, state, revoked_at FROM signing_keys")
                )
            }
        assert states == {"on": ("active", False), "off": ("revoked", True)}
        command.downgrade(config, "0004")
        with engine.connect() as conn:
            active = dict(conn.execute(sa.text("SELECT key_id, active FROM signing_keys")).fetchall())
        assert active == {"on": True, "off": False}
    finally:
        engine.dispose()


def test_0007_puts_existing_snapshots_and_nodes_in_the_default_group_and_back(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0005")
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO snapshots (version, envelope, sha256, previous_hash, signing_key_id, created_at, "
                    "created_by, reason) VALUES (3, '', 'h3', '', 'k', now(), '', '')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO nodes (node_id, software_version, mode, scope, applied_version, applied_hash, "
                    "last_ack_version, last_nack_version, last_nack_hash, last_nack_reason, connected) "
                    "VALUES ('n1', '', 0, '{}', 3, '', 0, 0, '', '', false)"
                )
            )
        upgrade_head(empty_database_url)
        with engine.begin() as conn:
            groups = conn.execute(
                sa.text("SELECT name, mode, site, tenants, providers, models FROM node_groups")
            )
            assert [tuple(r) for r in groups] == [("default", "cloud", "", None, None, None)]
            assert conn.execute(sa.text("SELECT node_group, version FROM snapshots")).one() == ("default", 3)
            assert conn.execute(sa.text("SELECT node_group FROM nodes")).scalar_one() == "default"
            # Versions are per group now: another group may use the same number.
            conn.execute(
                sa.text(
                    "INSERT INTO snapshots (node_group, version, envelope, sha256, previous_hash, signing_key_id, "
                    "created_at, created_by, reason) VALUES ('vault', 3, '', 'v3', '', 'k', now(), '', '')"
                )
            )
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(
                    sa.text(
                        "INSERT INTO node_groups (name, mode, site, deployment) VALUES ('Bad', 'cloud', '', '')"
                    )
                )
        # Back: only the chain a single-scope control plane can serve survives.
        command.downgrade(config, "0005")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version, sha256 FROM snapshots")).one() == (3, b"h3")
    finally:
        engine.dispose()


def test_0029_keeps_evidence_spend_as_no_workers_and_sums_the_chains_back(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0028")
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO evidence_spend (scope, \"window\", nanos) VALUES ('t//day', 'd', 500)")
            )
        command.upgrade(config, "0029")
        with engine.begin() as conn:
            rows = conn.execute(sa.text('SELECT scope, "window", chain_id, nanos FROM evidence_spend'))
            assert [tuple(r) for r in rows] == [("t//day", "d", "", 500)]
            conn.execute(
                sa.text(
                    "INSERT INTO evidence_spend (scope, \"window\", chain_id, nanos) VALUES ('t//day', 'd', 'n/0', 300)"
                )
            )
        command.downgrade(config, "0028")
        with engine.connect() as conn:
            rows = conn.execute(sa.text('SELECT scope, "window", nanos FROM evidence_spend'))
            assert [tuple(r) for r in rows] == [("t//day", "d", 800)]
    finally:
        engine.dispose()
