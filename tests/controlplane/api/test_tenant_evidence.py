"""Per-tenant evidence settings: stored (migration 0013), set and changed through the admin
API and CLI, refused precisely when unknown, carried by the snapshot (only when not the
defaults), and compiled by the node."""

from __future__ import annotations

import json

import grpc
import pytest

from dataplane.snapshot.compile import tenant_entry
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane, sql_rows


async def _snapshot_tenants(admin: Admin) -> dict[str, snapshot_pb2.Tenant]:
    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    return {t.name: t for t in snapshot_pb2.Snapshot.FromString(envelope.payload).tenants}


async def test_tenant_evidence_settings_through_the_admin_api_and_the_snapshot(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    plain = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="plain"))
    assert not plain.HasField("evidence")
    full = await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(
            name="audited",
            evidence_content=snapshot_pb2.EVIDENCE_CONTENT_FULL,
            evidence_spool_full=snapshot_pb2.SPOOL_FULL_REFUSE,
        )
    )
    assert full.evidence.content == snapshot_pb2.EVIDENCE_CONTENT_FULL
    assert full.evidence.spool_full == snapshot_pb2.SPOOL_FULL_REFUSE
    got = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="audited"))
    assert got.evidence == full.evidence
    rows = sql_rows(
        control_plane.database_url,
        "SELECT name, evidence_content, evidence_spool_full FROM tenants ORDER BY name",
    )
    assert [tuple(r) for r in rows] == [("audited", "full", "refuse"), ("plain", "digest", "serve_and_alarm")]

    tenants = await _snapshot_tenants(admin)
    assert not tenants["plain"].HasField("evidence")  # a default tenant's bytes do not change
    assert tenants["audited"].evidence.content == snapshot_pb2.EVIDENCE_CONTENT_FULL
    compiled = tenant_entry(0, tenants["audited"])
    assert (compiled.evidence_full, compiled.spool_refuse) == (True, True)
    assert (
        tenant_entry(1, tenants["plain"]).evidence_full,
        tenant_entry(1, tenants["plain"]).spool_refuse,
    ) == (
        False,
        False,
    )

    # Update one setting; the other stays.
    request = admin_pb2.UpdateTenantRequest(tenant="audited")
    request.evidence_spool_full = snapshot_pb2.SPOOL_FULL_SERVE_AND_ALARM
    updated = await admin.UpdateTenant(request)
    assert updated.evidence.content == snapshot_pb2.EVIDENCE_CONTENT_FULL
    assert updated.evidence.spool_full == snapshot_pb2.SPOOL_FULL_SERVE_AND_ALARM
    assert (await _snapshot_tenants(admin))[
        "audited"
    ].evidence.spool_full == snapshot_pb2.SPOOL_FULL_SERVE_AND_ALARM


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (admin_pb2.CreateTenantRequest(name="bad", evidence_content=7), "evidence_content"),  # type: ignore[arg-type]
        (admin_pb2.CreateTenantRequest(name="bad", evidence_spool_full=9), "evidence_spool_full"),  # type: ignore[arg-type]
    ],
)
async def test_unknown_evidence_settings_are_refused_naming_the_field(
    admin: Admin, request_: admin_pb2.CreateTenantRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.CreateTenant(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{field}: {getattr(request_, field)} is not one of")
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="good"))
    update = admin_pb2.UpdateTenantRequest(tenant="good")
    update.evidence_content = 5  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.UpdateTenant(update)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "evidence_content: 5 is not one of" in (info.value.details() or "")
    assert not (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="good"))).HasField("evidence")


def test_the_node_refuses_an_unknown_evidence_setting_naming_the_path() -> None:
    from dataplane.errors import SnapshotInvalid

    tenant = snapshot_pb2.Tenant(id="t1", name="x")
    tenant.evidence.content = 3  # type: ignore[assignment]
    with pytest.raises(SnapshotInvalid, match=r"\$\.tenants\[4\]\.evidence\.content: unknown value 3"):
        tenant_entry(4, tenant)


async def test_admin_cli_sets_and_shows_tenant_evidence_settings(control_plane: RunningControlPlane) -> None:
    async def run(*args: str) -> str:
        code, out, err = await _signalbox(
            "admin", "--target", control_plane.address, "--token", control_plane.token, *args
        )
        assert code == 0, err
        return out

    await run("tenant", "create", "acme", "--evidence-content", "full")
    shown = await run("tenant", "get", "acme")
    assert "full,serve_and_alarm" in shown
    await run("tenant", "update", "acme", "--evidence-spool-full", "refuse")
    got = json.loads(await run("--json", "tenant", "get", "acme"))
    assert got["evidence"] == {"content": "EVIDENCE_CONTENT_FULL", "spool_full": "SPOOL_FULL_REFUSE"}
