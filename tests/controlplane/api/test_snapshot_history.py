"""Snapshot history over the real Admin API on real PostgreSQL: list, show, diff, rollback, retention."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.json_format import MessageToJson

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin, enrolled_sync_node
from tests.fixtures.jwks import TestIdp
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually


async def _code(awaitable: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


async def _all_versions(admin: Admin) -> list[int]:
    listed = await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(limit=1000))
    return [s.version for s in listed.snapshots]


async def _content(admin: Admin, version: int) -> admin_pb2.SnapshotInfo:
    return await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(version=version, include_content=True))


async def test_list_pages_newest_first_and_says_who_changed_what(admin: Admin) -> None:
    await admin.seed()
    newest = await admin.latest_version()
    first = await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(limit=2))
    assert [s.version for s in first.snapshots] == [newest, newest - 1]
    assert first.next_before == newest - 1
    assert (first.snapshots[0].created_by, first.snapshots[0].reason) == ("admin:tests", "create model large")
    assert first.snapshots[1].reason == "create model small"
    second = await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(limit=2, before=first.next_before))
    assert [s.version for s in second.snapshots] == [newest - 2, newest - 3]
    everything = await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest())
    assert everything.next_before == 0
    assert everything.snapshots[-1].version == 1
    assert (everything.snapshots[-1].created_by, everything.snapshots[-1].reason) == (
        "admin:system",
        "initial snapshot",
    )
    code, message = await _code(admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(limit=1001)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("limit:")


async def test_show_gives_the_config_by_name_and_reference_never_a_secret_or_hash(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.seed()
    created = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant="acme", name="ci", scopes=["model:small"])
    )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: small\n"))
    info = await _content(admin, 0)
    assert info.version == await admin.latest_version()
    content = info.content
    assert [t.name for t in content.tenants] == ["acme"]
    assert [(k.id, k.name, k.prefix, list(k.scopes)) for k in content.keys] == [
        (created.key.id, "ci", created.key.prefix, ["model:small"])
    ]
    assert [(p.name, p.credential.env) for p in content.providers] == [("sim", "SIGNALBOX_CRED_SIM")]
    assert sorted((m.alias, m.deployments[0].provider) for m in content.models) == [
        ("large", "sim"),
        ("small", "sim"),
    ]
    assert [p.document_json for p in content.policies] == ['{"default_model":"small"}']
    assert control_plane.cp.api_key_hasher is not None
    digest = control_plane.cp.api_key_hasher.digest(created.secret)
    wire = info.SerializeToString()
    text = MessageToJson(info)
    assert created.secret.encode() not in wire
    assert digest not in wire
    assert digest.hex() not in text
    assert created.secret not in text
    # Without the flag, GetSnapshot stays the small header it always was.
    assert not (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())).HasField("content")
    code, message = await _code(
        admin.GetSnapshot(admin_pb2.GetSnapshotRequest(version=9999, include_content=True))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "9999" in message


async def test_diff_names_each_object_and_field_that_changed(admin: Admin) -> None:
    await admin.seed()
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: small\n"))
    before = await admin.latest_version()
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", tier="silver"))
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="beta"))
    await admin.DeleteModel(admin_pb2.DeleteModelRequest(model="large"))
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(
            tenant="acme", document="default_model: small\nallowed_models: [small]\n"
        )
    )
    after = await admin.latest_version()
    d = await admin.DiffSnapshots(admin_pb2.DiffSnapshotsRequest(from_version=before, to_version=after))
    changes = {(c.kind, c.name): c for c in d.changes}
    assert set(changes) == {("tenant", "acme"), ("tenant", "beta"), ("model", "large"), ("policy", "acme")}
    acme = changes["tenant", "acme"]
    assert acme.change == "changed"
    assert [(f.field, f.old, f.new) for f in acme.fields] == [("tier", '"gold"', '"silver"')]
    assert changes["tenant", "beta"].change == "added"
    assert changes["model", "large"].change == "removed"
    policy = changes["policy", "acme"]
    assert policy.change == "changed"
    assert [f.field for f in policy.fields] == ["version"]
    assert f"--- v{before}" in policy.document_diff
    assert '+  "allowed_models": [' in policy.document_diff
    # The same version against itself: nothing.
    same = await admin.DiffSnapshots(admin_pb2.DiffSnapshotsRequest(from_version=after, to_version=after))
    assert list(same.changes) == []
    code, message = await _code(
        admin.DiffSnapshots(admin_pb2.DiffSnapshotsRequest(from_version=0, to_version=after))
    )
    assert (code, message.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "from_version")
    code, _ = await _code(
        admin.DiffSnapshots(admin_pb2.DiffSnapshotsRequest(from_version=before, to_version=9999))
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_rollback_restores_the_tables_and_publishes_a_new_higher_version(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    await admin.seed()
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="beta"))
    kept = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant="acme", name="kept", scopes=["op:chat"])
    )
    revoked = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="revoked"))
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: small\n"))
    target = await admin.latest_version()
    old = (await _content(admin, target)).content

    # Everything changes afterwards: fields, names reused by other objects, deletions, additions.
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", tier="silver", labels={"x": "1"}))
    await admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant="beta"))
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="beta", tier="new"))
    await admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=revoked.key.id))
    await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="later"))
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(name="sim2", type="simulated", base_url="http://127.0.0.1:9/v2")
        )
    )
    await admin.UpdateModel(
        admin_pb2.UpdateModelRequest(
            model=admin_pb2.Model(
                alias="small",
                context_window=1,
                deployments=[admin_pb2.Deployment(provider="sim2", upstream_model="s2")],
            )
        )
    )
    await admin.DeleteModel(admin_pb2.DeleteModelRequest(model="large"))
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(
            tenant="acme", document="default_model: small\nallowed_models: [small]\n"
        )
    )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(document="default_model: small\n"))
    latest = await admin.latest_version()

    result = await admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=target))
    assert result.snapshot_version == latest + 1
    assert result.restored_from == target
    assert list(result.keys_not_restored) == [revoked.key.id]  # a revocation is never undone

    # The system of record says what the old version said.
    tenants = (await admin.ListTenants(admin_pb2.ListTenantsRequest())).tenants
    assert sorted((t.id, t.name, t.tier, dict(t.labels)) for t in tenants) == sorted(
        (t.id, t.name, t.tier, dict(t.labels)) for t in old.tenants
    )
    assert [p.name for p in (await admin.ListProviders(admin_pb2.ListProvidersRequest())).providers] == [
        "sim"
    ]
    models = (await admin.ListModels(admin_pb2.ListModelsRequest())).models
    assert sorted((m.id, m.alias, m.context_window) for m in models) == sorted(
        (m.id, m.alias, m.context_window) for m in old.models
    )
    keys = (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys
    assert [(k.id, k.name, list(k.scopes)) for k in keys] == [(kept.key.id, "kept", ["op:chat"])]
    policy = await admin.GetPolicy(admin_pb2.GetPolicyRequest(tenant="acme"))
    assert policy.document_json == '{"default_model":"small"}'
    assert policy.created_by == "admin:tests"
    code, _ = await _code(admin.GetPolicy(admin_pb2.GetPolicyRequest()))
    assert code == grpc.StatusCode.NOT_FOUND  # no platform default existed then

    # The new snapshot carries the old config: only the revoked key and policy version numbers differ.
    d = await admin.DiffSnapshots(
        admin_pb2.DiffSnapshotsRequest(from_version=target, to_version=result.snapshot_version)
    )
    assert [(c.kind, c.id, c.change) for c in d.changes] == [
        ("key", revoked.key.id, "removed"),
        ("policy", policy.tenant_id, "changed"),
    ]
    assert [f.field for f in d.changes[1].fields] == ["version"]
    assert d.changes[1].document_diff == ""

    listed = (await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(limit=1))).snapshots[0]
    assert (listed.version, listed.created_by, listed.reason) == (
        result.snapshot_version,
        "admin:tests",
        f"rollback to v{target}",
    )
    # Audited like any change.
    engine = sa.create_engine(control_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            audit = conn.execute(
                sa.text("SELECT actor, target, result FROM audit_log WHERE method = 'RollbackSnapshot'")
            ).fetchall()
    finally:
        engine.dispose()
    assert [tuple(r) for r in audit] == [("admin:tests", f"version={target}", "OK")]


async def test_rollback_untangles_names_that_objects_swapped_since(admin: Admin) -> None:
    await admin.seed()
    target = await admin.latest_version()
    ids = {m.alias: m.id for m in (await admin.ListModels(admin_pb2.ListModelsRequest())).models}

    def renamed(model_id: str, alias: str) -> admin_pb2.UpdateModelRequest:
        deployment = admin_pb2.Deployment(provider="sim", upstream_model=f"{alias}-v1")
        return admin_pb2.UpdateModelRequest(
            model=admin_pb2.Model(id=model_id, alias=alias, capabilities=[1], deployments=[deployment])
        )

    # "small" and "large" trade aliases (through a third name, as the API requires).
    await admin.UpdateModel(renamed(ids["small"], "swap"))
    await admin.UpdateModel(renamed(ids["large"], "small"))
    await admin.UpdateModel(renamed(ids["small"], "large"))
    await admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=target))
    after = {m.alias: m.id for m in (await admin.ListModels(admin_pb2.ListModelsRequest())).models}
    assert after == ids


async def test_rollback_of_an_unknown_version_changes_nothing(admin: Admin) -> None:
    await admin.seed()
    before = await admin.latest_version()
    code, message = await _code(admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=9999)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "9999" in message
    code, message = await _code(admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("version:")
    code, message = await _code(admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=2**64 - 1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("version:")
    code, message = await _code(admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(before=2**64 - 1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("before:")
    assert await admin.latest_version() == before


async def test_a_viewer_may_list_show_and_diff_but_not_roll_back(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    await admin.seed()
    version = await admin.latest_version()
    assert control_plane.cp.admin is not None
    _, token = await control_plane.cp.admin.create_token("auditor", role="auditor")
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        viewer = Admin(admin_pb2_grpc.AdminServiceStub(channel), (("authorization", f"Bearer {token}"),))
        assert (await viewer.ListSnapshots(admin_pb2.ListSnapshotsRequest())).snapshots[0].version == version
        assert (await _content(viewer, version)).content.tenants[0].name == "acme"
        await viewer.DiffSnapshots(admin_pb2.DiffSnapshotsRequest(from_version=1, to_version=version))
        code, message = await _code(viewer.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=1)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "auditor" in message
    assert await admin.latest_version() == version
    assert [t.name for t in (await admin.ListTenants(admin_pb2.ListTenantsRequest())).tenants] == ["acme"]


async def test_retention_keeps_the_last_n_the_versions_nodes_run_and_exported_pins(
    database_url: str, private_tmp: Path
) -> None:
    settings = cp_settings(database_url, private_tmp, snapshot_retention=3)
    async with (
        running_control_plane(settings) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        admin = Admin(admin_pb2_grpc.AdminServiceStub(channel), running.metadata)
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="t0"))
        # A node runs this version (it ACKed it) ...
        node = await enrolled_sync_node(running, "node-old", private_tmp / "node-old")
        try:
            envelope = await node.next_envelope()
            running_version = node.verified(envelope).version
            node.ack(envelope, running_version)

            async def applied() -> bool:
                nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
                return any(n.node_id == "node-old" and n.applied_version == running_version for n in nodes)

            await eventually(applied, message="node-old applied its version")
            # ... and this one left as an air-gapped pin.
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="t1"))
            exported = snapshot_pb2.Snapshot.FromString(
                (await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())).payload
            ).version
            for i in range(2, 10):
                await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=f"t{i}"))
            newest = await admin.latest_version()
            assert newest - 3 > exported > running_version
            assert await _all_versions(admin) == [newest, newest - 1, newest - 2, exported, running_version]
            pinned = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(version=exported))
            assert pinned.HasField("exported_at")

            # Once the node moves on, its old version is no longer protected.
            later = await node.next_envelope()
            while node.verified(later).version < newest:
                later = await node.next_envelope()
            node.ack(later, newest)

            async def moved() -> bool:
                nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
                return any(n.node_id == "node-old" and n.applied_version == newest for n in nodes)

            await eventually(moved, message="node-old applied the newest version")
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="t10"))
            assert await _all_versions(admin) == [newest + 1, newest, newest - 1, exported]
        finally:
            await node.close()


async def test_identities_show_in_history_and_a_rollback_leaves_them_as_they_are(admin: Admin) -> None:
    await admin.seed()
    revoked = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="revoked"))
    idp = TestIdp("https://idp.acme.test")
    issuer = await admin.AddJwtIssuer(
        admin_pb2.AddJwtIssuerRequest(
            tenant="acme",
            issuer=snapshot_pb2.JwtIssuer(
                issuer=idp.issuer,
                audiences=["signalbox"],
                algorithms=["ES256", "RS256"],
                jwks_json=idp.jwks(),
            ),
        )
    )
    target = await admin.latest_version()
    # Since then: the issuer removed (a revocation), a mapping added, the key deleted.
    await admin.RemoveJwtIssuer(admin_pb2.RemoveJwtIssuerRequest(id=issuer.id))
    mapping = await admin.AddMtlsMapping(
        admin_pb2.AddMtlsMappingRequest(
            tenant="acme", mapping=snapshot_pb2.MtlsMapping(uri="spiffe://acme.test/app", scopes=["op:chat"])
        )
    )
    await admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=revoked.key.id))
    latest = await admin.latest_version()

    # show: each version's identities, a JWT issuer with the key ids of its JWKS.
    old = (await _content(admin, target)).content
    assert [(i.id, i.tenant_id, i.issuer.issuer, list(i.key_ids)) for i in old.jwt_issuers] == [
        (issuer.id, issuer.tenant_id, idp.issuer, ["ec-1", "rsa-1"])
    ]
    assert list(old.mtls_mappings) == []
    new = (await _content(admin, latest)).content
    assert list(new.jwt_issuers) == []
    assert [(m.id, m.mapping.uri, list(m.mapping.scopes)) for m in new.mtls_mappings] == [
        (mapping.id, "spiffe://acme.test/app", ["op:chat"])
    ]

    # diff: by issuer and URI, key ids not keys; never a secret or a hash.
    diff = await admin.DiffSnapshots(admin_pb2.DiffSnapshotsRequest(from_version=target, to_version=latest))
    identities = [c for c in diff.changes if c.kind == "identity"]
    assert [(c.name, c.change) for c in identities] == [
        (idp.issuer, "removed"),
        ("spiffe://acme.test/app", "added"),
    ]
    removed = {f.field: f.old for f in identities[0].fields}
    assert removed["key_ids"] == '["ec-1","rsa-1"]'
    assert removed["tenant"] == '"acme"'
    assert "jwks_json" not in removed
    shown = MessageToJson(diff)
    assert '"kty"' not in shown
    assert revoked.secret not in shown

    # Rollback: the identities stay as they are, the revoked key stays revoked.
    result = await admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=target))
    assert list(result.keys_not_restored) == [revoked.key.id]
    issuers = await admin.ListJwtIssuers(admin_pb2.ListJwtIssuersRequest(tenant="acme"))
    assert list(issuers.issuers) == []
    mappings = await admin.ListMtlsMappings(admin_pb2.ListMtlsMappingsRequest(tenant="acme"))
    assert [m.id for m in mappings.mappings] == [mapping.id]
    rolled = (await _content(admin, result.snapshot_version)).content
    assert list(rolled.jwt_issuers) == []
    assert [m.id for m in rolled.mtls_mappings] == [mapping.id]
    assert revoked.key.id not in [k.id for k in rolled.keys]
    after = await admin.DiffSnapshots(
        admin_pb2.DiffSnapshotsRequest(from_version=target, to_version=result.snapshot_version)
    )
    assert [(c.kind, c.name, c.change) for c in after.changes if c.kind in ("identity", "key")] == [
        ("key", "revoked", "removed"),
        ("identity", idp.issuer, "removed"),
        ("identity", "spiffe://acme.test/app", "added"),
    ]
