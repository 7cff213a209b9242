"""The bulk snapshot build (SQL tuples, chunked reads, assembly in a thread) produces
exactly the payload bytes of the per-object ORM conversion it replaced."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.db.session import create_engine, session_factory
from controlplane.repositories import config as repo
from controlplane.snapshots import build
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane

SCOPE = snapshot_pb2.Scope(deployment="d", node_group="g", site="s")
TRUSTED = [("k1", b"\x01" * 32, "active"), ("k0", b"\x02" * 32, "retiring")]


async def _reference(session: object, created: datetime) -> snapshot_pb2.Snapshot:
    """The build as it was: ORM objects, converted one by one."""
    tenants = await repo.list_tenants(session)  # type: ignore[arg-type]
    return snapshot_pb2.Snapshot(
        version=7,
        created_at=build.timestamp(created),
        expires_at=build.timestamp(created + timedelta(days=1)),
        previous_hash=b"p" * 32,
        scope=SCOPE,
        tenants=[build.tenant_pb(t) for t in tenants],
        api_keys=[build.api_key_pb(k) for k in await repo.list_api_keys(session)],  # type: ignore[arg-type]
        providers=[build.provider_pb(p) for p in await repo.list_providers(session)],  # type: ignore[arg-type]
        models=[build.model_pb(m) for m in await repo.list_models(session)],  # type: ignore[arg-type]
        policies=[build.policy_pb(p) for p in await repo.current_policies(session)],  # type: ignore[arg-type]
        trusted_keys=[
            snapshot_pb2.TrustedKey(key_id=k, ed25519_public_key=pub, state=build.TRUSTED_KEY_STATE[s])
            for k, pub, s in TRUSTED
        ],
    )


@pytest.mark.parametrize("chunk_rows", [build.CHUNK_ROWS, 2])
async def test_bulk_build_is_byte_identical_to_the_orm_conversion(
    control_plane: RunningControlPlane, admin: Admin, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    # 2: every table read in several JSON chunks, so their order and joins are exercised.
    monkeypatch.setattr(build, "CHUNK_ROWS", chunk_rows)
    await admin.seed("acme")
    await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(name="beta", tier="silver", labels={"a": "1", "b": "2"})
    )
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(
                name="filecred",
                type="openai",
                base_url="https://example.invalid/v1",
                credential=snapshot_pb2.SecretRef(file="openai.key"),
                settings={"api_version": "2024"},
                timeout_ms=1234,
                location=snapshot_pb2.PROVIDER_LOCATION_SITE,
                site="berlin",
                region="eu-central-1",
                jurisdiction="EU",
            )
        )
    )
    await admin.CreateModel(
        admin_pb2.CreateModelRequest(
            model=admin_pb2.Model(
                alias="multi",
                capabilities=[1, 2],
                context_window=8000,
                max_output_tokens=100,
                input_price_nanos_per_mtok=5,
                output_price_nanos_per_mtok=6,
                cached_input_price_nanos_per_mtok=7,
                certified_for=[1, 2],
                certifications=["iso"],
                typical_latency_ms=250,
                attributes={"family": "x"},
                deployments=[
                    admin_pb2.Deployment(provider="filecred", upstream_model="b", weight=3),
                    admin_pb2.Deployment(provider="sim", upstream_model="a", weight=1),
                ],
            )
        )
    )
    expires = Timestamp()
    expires.FromDatetime(datetime.now(UTC).replace(microsecond=123456) + timedelta(days=3))
    for tenant, scopes in (("acme", []), ("beta", ["model:small"]), ("acme", ["model:large", "model:small"])):
        await admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(tenant=tenant, scopes=scopes, expires_at=expires)
        )
    await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="beta", name="no-expiry"))
    policy = {"default_model": "small", "allowed_models": ["small", "multi"]}
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="", document=json.dumps(policy)))
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=json.dumps(policy)))
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document=json.dumps({"default_model": "large"}))
    )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="beta", document=json.dumps(policy)))
    await admin.DeletePolicy(admin_pb2.DeletePolicyRequest(tenant="beta"))

    engine = create_engine(control_plane.database_url)
    try:
        async with session_factory(engine)() as session:
            created = datetime(2026, 11, 29, 12, 0, 0, 654321, tzinfo=UTC)
            fast = await build.build_snapshot(
                session,
                version=7,
                previous_hash=b"p" * 32,
                created_at=created,
                expires_at=created + timedelta(days=1),
                scope=SCOPE,
                trusted=TRUSTED,
            )
            reference = await _reference(session, created)
    finally:
        await engine.dispose()
    assert len(fast.api_keys) == 4
    assert len(fast.policies) == 2
    assert len(fast.models) == 3
    assert [d.upstream_model for d in fast.models[1].deployments] == ["b", "a"]
    assert fast.SerializeToString(deterministic=True) == reference.SerializeToString(deterministic=True)
