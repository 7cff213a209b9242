"""``rows.RowCache`` + ``rows.cut``: every group's body, byte for byte the fields 10..14 of
``scope_snapshot(build_snapshot(...))``, read incrementally from a real database across
admin changes, rolled-back transactions and repeated writes in one transaction."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.session import create_engine, session_factory
from controlplane.repositories import config as config_repo
from controlplane.snapshots import rows
from controlplane.snapshots.build import build_snapshot
from controlplane.snapshots.scope import GroupView, scope_snapshot
from dataplane.config.model import DeploymentMode
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane

PUBLIC = snapshot_pb2.PROVIDER_LOCATION_PUBLIC_CLOUD
ON_PREM = snapshot_pb2.PROVIDER_LOCATION_ON_PREM
SITE = snapshot_pb2.PROVIDER_LOCATION_SITE
HEADER_AND_TRUST = ("version", "created_at", "expires_at", "previous_hash", "scope", "trusted_keys")


@pytest.fixture
async def sessions(control_plane: RunningControlPlane) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(control_plane.database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def _expected(session: AsyncSession, group: GroupView) -> snapshot_pb2.Snapshot:
    """What the existing path gives ``group``, header and trusted keys removed."""
    now = datetime.now(UTC)
    full = await build_snapshot(
        session,
        version=3,
        previous_hash=b"h" * 32,
        created_at=now,
        expires_at=now + timedelta(days=1),
        scope=snapshot_pb2.Scope(),
        trusted=[("k1", b"\x01" * 32, "active")],
    )
    scoped = scope_snapshot(full, group)
    for name in HEADER_AND_TRUST:
        scoped.ClearField(name)
    return scoped


async def _check(session: AsyncSession, cache: rows.RowCache, groups: list[GroupView]) -> rows.FullRows:
    """The cache's body of every group equals the existing path's; returns what it read."""
    full = await cache.read(session)
    for group in groups:
        body = rows.cut(full, group)
        assert sorted(body.records) == list(rows.BODY_FIELDS)
        expected = await _expected(session, group)
        assert body.encoded() == expected.SerializeToString(deterministic=True), group.name
    return full


async def _locked_check(
    sessions: async_sessionmaker[AsyncSession], cache: rows.RowCache, groups: list[GroupView]
) -> rows.FullRows:
    async with sessions() as session, session.begin():
        await config_repo.lock_config(session)
        return await _check(session, cache, groups)


def _provider(
    name: str, location: int = 0, site: str = "", **extra: object
) -> admin_pb2.CreateProviderRequest:
    return admin_pb2.CreateProviderRequest(
        provider=admin_pb2.Provider(
            name=name,
            type="simulated",
            base_url="http://127.0.0.1:9/v1",
            credential=snapshot_pb2.SecretRef(env="SIGNALBOX_CRED_SIM"),
            location=location,
            site=site,
            **extra,  # type: ignore[arg-type]
        )
    )


def _model(alias: str, *deployments: tuple[str, str, int], **extra: object) -> admin_pb2.Model:
    return admin_pb2.Model(
        alias=alias,
        capabilities=[1],
        deployments=[admin_pb2.Deployment(provider=p, upstream_model=u, weight=w) for p, u, w in deployments],
        **extra,  # type: ignore[arg-type]
    )


async def _varied(admin: Admin) -> dict[str, str]:
    """Tenants with labels, keys of every shape, providers of every location and two sites,
    models with several deployments, the platform default and tenant policies (one deleted,
    one with several versions). Returns a few ids by name."""
    await admin.seed("acme")  # provider "sim" (no location), models "small" and "large"
    beta = await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(name="beta", tier="silver", labels={"a": "1", "b": "2"})
    )
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="gamma", labels={"team": "g"}))
    await admin.CreateProvider(
        _provider(
            "cloud",
            PUBLIC,
            settings={"api_version": "2024"},
            timeout_ms=1234,
            region="eu-central-1",
            jurisdiction="EU",
        )
    )
    await admin.CreateProvider(_provider("dc", ON_PREM))
    await admin.CreateProvider(_provider("vllm-berlin", SITE, "berlin"))
    await admin.CreateProvider(_provider("vllm-munich", SITE, "munich"))
    multi = await admin.CreateModel(
        admin_pb2.CreateModelRequest(
            model=_model(
                "multi",
                ("vllm-berlin", "b", 3),
                ("cloud", "c", 1),
                ("vllm-munich", "m", 2),
                context_window=8000,
                max_output_tokens=100,
                input_price_nanos_per_mtok=5,
                output_price_nanos_per_mtok=6,
                cached_input_price_nanos_per_mtok=7,
                certified_for=[1, 2],
                certifications=["iso"],
                typical_latency_ms=250,
                attributes={"family": "x", "size": "l"},
            )
        )
    )
    await admin.CreateModel(
        admin_pb2.CreateModelRequest(model=_model("munich-only", ("vllm-munich", "u", 1)))
    )
    await admin.CreateModel(
        admin_pb2.CreateModelRequest(model=_model("prem", ("dc", "p", 1), ("sim", "s", 1)))
    )
    expires = Timestamp()
    expires.FromDatetime(datetime.now(UTC).replace(microsecond=123456) + timedelta(days=3))
    for tenant, scopes, expiry in (
        ("acme", [], expires),
        ("beta", ["model:small"], expires),
        ("acme", ["model:large", "model:small"], None),
        ("gamma", [], None),
    ):
        await admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(tenant=tenant, scopes=scopes, expires_at=expiry)
        )
    policy = {"default_model": "small", "allowed_models": ["small", "multi"]}
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="", document=json.dumps(policy)))
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=json.dumps(policy)))
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document=json.dumps({"default_model": "large"}))
    )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="beta", document=json.dumps(policy)))
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="gamma", document=json.dumps(policy)))
    await admin.DeletePolicy(admin_pb2.DeletePolicyRequest(tenant="beta"))
    return {"beta": beta.id, "multi": multi.id}


def _groups(ids: dict[str, str]) -> list[GroupView]:
    return [
        GroupView("default"),
        GroupView("vault", DeploymentMode.AIR_GAPPED, site="berlin", deployment="site"),
        GroupView("prem", DeploymentMode.ON_PREM),
        GroupView(
            "listed",
            tenants=frozenset({"acme", ids["beta"], "nobody"}),
            providers=frozenset({"cloud", "sim", "vllm-berlin"}),
            models=frozenset({ids["multi"], "small", "prem", "munich-only"}),
        ),
        GroupView("none", tenants=frozenset(), providers=frozenset(), models=frozenset()),
    ]


@pytest.mark.parametrize(
    ("chunk_rows", "bulk_fraction"),
    [(rows.CHUNK_ROWS, rows.BULK_FRACTION), (2, 0)],
    ids=["defaults", "small"],
)
async def test_bodies_are_exact_before_and_after_changes_with_one_cache(
    control_plane: RunningControlPlane,
    admin: Admin,
    sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
    chunk_rows: int,
    bulk_fraction: int,
) -> None:
    # "small": listings in many chunks, so reused, shifted and new chunks are all exercised,
    # and every fetch by ids (the defaults fetch these small tables whole).
    monkeypatch.setattr(rows, "CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(rows, "BULK_FRACTION", bulk_fraction)
    ids = await _varied(admin)
    groups = _groups(ids)
    cache = rows.RowCache()
    full = await _locked_check(sessions, cache, groups)
    assert (len(full.tenants), len(full.api_keys), len(full.providers), len(full.models)) == (3, 4, 5, 5)
    assert len(full.policies) == 3  # default, acme (newest of two), gamma; beta's was deleted
    async with sessions() as session:
        air = await _expected(session, groups[1])
        listed = await _expected(session, groups[3])
    # The groups do differ: trimmed and dropped models, filtered tenants, keys and policies.
    assert [p.name for p in air.providers] == ["vllm-berlin"]
    assert {m.alias: len(m.deployments) for m in air.models} == {"multi": 1}
    assert [t.name for t in listed.tenants] == ["acme", "beta"]
    assert len(listed.api_keys) == 3
    assert len(listed.policies) == 2
    assert {m.alias: len(m.deployments) for m in listed.models} == {"multi": 2, "prem": 1, "small": 1}

    # Unchanged database: the same bodies again, nothing re-read.
    await _locked_check(sessions, cache, groups)

    tenants_before = {t.name: t for t in full.tenants}
    keys_before = list(full.api_keys)
    keys = await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant="acme"))
    await admin.UpdateTenant(
        admin_pb2.UpdateTenantRequest(tenant="beta", labels={"c": "3"}, replace_labels=True)
    )
    await admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=keys.keys[0].id))
    for name in ("n1", "n2", "n3"):
        await admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(tenant="beta", name=name, scopes=["model:multi"])
        )
    await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(name="aardvark")
    )  # sorts first: shifts every chunk
    await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="aardvark"))
    await admin.UpdateModel(
        admin_pb2.UpdateModelRequest(model=_model("multi", ("cloud", "c2", 5), ("vllm-berlin", "b", 1)))
    )
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="gamma", document=json.dumps({"default_model": "multi"}))
    )
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="", document=json.dumps({"default_model": "large"}))
    )
    await admin.DeleteModel(admin_pb2.DeleteModelRequest(model="munich-only"))
    await admin.DeleteProvider(admin_pb2.DeleteProviderRequest(provider="vllm-munich"))
    await admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant="gamma"))

    full = await _locked_check(sessions, cache, groups)
    assert [t.name for t in full.tenants] == ["aardvark", "acme", "beta"]
    # Incremental: unchanged rows are the very objects encoded before, changed ones are new.
    tenants_after = {t.name: t for t in full.tenants}
    assert tenants_after["acme"] is tenants_before["acme"]
    assert tenants_after["beta"] is not tenants_before["beta"]
    assert full.api_keys[:2] == keys_before[1:3]
    assert all(a is b for a, b in zip(full.api_keys[:2], keys_before[1:3], strict=True))
    assert (len(full.api_keys), len(full.providers), len(full.models), len(full.policies)) == (6, 4, 4, 2)
    async with sessions() as session:
        listed = await _expected(session, groups[3])
    assert [d.upstream_model for d in listed.models[0].deployments] == ["c2", "b"]
    # A fresh cache reads the same.
    fresh = await _locked_check(sessions, rows.RowCache(), groups)
    assert fresh.records == full.records


async def test_rows_of_a_rolled_back_transaction_never_reach_a_later_read(
    control_plane: RunningControlPlane, admin: Admin, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ids = await _varied(admin)
    groups = _groups(ids)
    cache = rows.RowCache()
    before = await _locked_check(sessions, cache, groups)
    async with sessions() as session, session.begin():
        await config_repo.lock_config(session)
        await session.execute(text("UPDATE tenants SET labels = '{\"leaked\": \"yes\"}' WHERE name = 'beta'"))
        await session.execute(
            text(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256, scopes)"
                " SELECT gen_random_uuid(), id, 'leak', 'sbx_leak0000', sha256('leak'::bytea), '[]'"
                " FROM tenants WHERE name = 'acme'"
            )
        )
        await session.execute(
            text(
                "INSERT INTO tenants (id, name, tier, active, labels) VALUES (gen_random_uuid(), 'zz', '', true, '{}')"
            )
        )
        await session.execute(text("UPDATE deployments SET weight = 9"))
        # The cache sees the transaction's own writes (it reads inside it)...
        during = await _check(session, cache, groups)
        assert len(during.tenants) == len(before.tenants) + 1
        assert len(during.api_keys) == len(before.api_keys) + 1
        await session.rollback()
    # ...and none of them once it rolled back.
    after = await _locked_check(sessions, cache, groups)
    assert after.records == before.records


async def test_a_row_written_twice_in_one_transaction_is_read_as_it_is_now(
    control_plane: RunningControlPlane, admin: Admin, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Both versions of the row carry the same ``xmin``: the key must tell them apart."""
    ids = await _varied(admin)
    groups = _groups(ids)
    cache = rows.RowCache()
    async with sessions() as session, session.begin():
        await config_repo.lock_config(session)
        await session.execute(text("UPDATE tenants SET labels = '{\"v\": \"1\"}' WHERE name = 'beta'"))
        await session.execute(text("UPDATE models SET context_window = 1 WHERE alias = 'multi'"))
        await _check(session, cache, groups)
        await session.execute(text("UPDATE tenants SET labels = '{\"v\": \"2\"}' WHERE name = 'beta'"))
        await session.execute(text("UPDATE models SET context_window = 2 WHERE alias = 'multi'"))
        full = await _check(session, cache, groups)
    beta = next(t for t in full.tenants if t.name == "beta")
    tenant = snapshot_pb2.Tenant()
    tenant.ParseFromString(beta.record[2:])  # tag and a one-byte length: a small tenant
    assert dict(tenant.labels) == {"v": "2"}


async def test_an_empty_database_gives_empty_bodies(
    control_plane: RunningControlPlane, sessions: async_sessionmaker[AsyncSession]
) -> None:
    full = await _locked_check(sessions, rows.RowCache(), [GroupView("default")])
    assert rows.cut(full, GroupView("default")).records == {f: [] for f in rows.BODY_FIELDS}


async def test_a_savepoint_rolled_back_inside_the_transaction_leaves_no_trace(
    control_plane: RunningControlPlane, admin: Admin, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Batched admin changes run each member in a savepoint: one that fails is rolled back
    while the transaction goes on, and the publish that follows must not see it."""
    ids = await _varied(admin)
    groups = _groups(ids)
    cache = rows.RowCache()
    async with sessions() as session, session.begin():
        await config_repo.lock_config(session)
        before = await _check(session, cache, groups)
        savepoint = await session.begin_nested()
        await session.execute(
            text("UPDATE tenants SET labels = '{\"in\": \"savepoint\"}' WHERE name = 'beta'")
        )
        await session.execute(text("DELETE FROM api_keys WHERE name = ''"))
        during = await _check(session, cache, groups)
        assert during.records != before.records
        await savepoint.rollback()
        after = await _check(session, cache, groups)
    assert after.records == before.records
