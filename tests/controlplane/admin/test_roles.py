"""Admin roles: platform_admin (everything), tenant_admin (one tenant's keys, caller
identities, policies, evidence, admin tokens), auditor (reads; platform-wide or one
tenant's). Existing tokens keep their meaning across migration 0017; tokens are managed
through the Admin API and ``signalbox admin admins token``."""

from __future__ import annotations

import uuid

import grpc
import pytest
import sqlalchemy as sa
from alembic import command

from controlplane.db.migrate import alembic_config, upgrade_head
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin, admin_cli
from tests.fixtures.postgres import RunningControlPlane, sql_rows


async def _code(awaitable: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


def test_existing_tokens_keep_what_they_could_do_across_0017(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0016")
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    insert = sa.text(
        "INSERT INTO admin_tokens (id, name, prefix, token_sha256, role) VALUES (:id, :name, 'p', :sha, :role)"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"id": uuid.uuid4(), "name": "ops", "sha": b"\x01", "role": "admin"})
            conn.execute(insert, {"id": uuid.uuid4(), "name": "watch", "sha": b"\x02", "role": "viewer"})
        upgrade_head(empty_database_url)
        with engine.connect() as conn:
            rows = {tuple(r) for r in conn.execute(sa.text("SELECT name, role, tenant_id FROM admin_tokens"))}
        assert rows == {("ops", "platform_admin", None), ("watch", "auditor", None)}
        command.downgrade(config, "0016")
        with engine.connect() as conn:
            rows = {tuple(r) for r in conn.execute(sa.text("SELECT name, role FROM admin_tokens"))}
        assert rows == {("ops", "admin"), ("watch", "viewer")}
    finally:
        engine.dispose()


async def test_the_bootstrap_token_is_a_platform_admin(control_plane: RunningControlPlane) -> None:
    assert sql_rows(control_plane.database_url, "SELECT role, tenant_id FROM admin_tokens") == [
        ("platform_admin", None)
    ]


async def test_a_tenant_admin_manages_its_own_tenant(admin: Admin) -> None:
    await admin.seed("acme")
    created = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="acme-ops", role="tenant_admin", tenant="acme")
    )
    assert created.token.startswith("sbxadm_")
    assert (created.info.role, created.info.created_by) == ("tenant_admin", "admin:tests")
    ops = admin.with_token(created.token)
    key = await ops.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="svc"))
    assert [k.id for k in (await ops.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys] == [key.key.id]
    await ops.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document='{"default_model": "small"}'))
    assert (await ops.GetPolicy(admin_pb2.GetPolicyRequest(tenant="acme"))).version == 1
    mapping = await ops.AddMtlsMapping(
        admin_pb2.AddMtlsMappingRequest(mapping=snapshot_pb2.MtlsMapping(uri="spiffe://acme.test/svc"))
    )
    await ops.RemoveMtlsMapping(admin_pb2.RemoveMtlsMappingRequest(id=mapping.id))
    await ops.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=key.key.id))
    # Its own auditor, which can read but not write, and is gone once revoked.
    auditor = await ops.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="acme-aud", role="auditor"))
    assert auditor.info.tenant_id == created.info.tenant_id
    reader = admin.with_token(auditor.token)
    assert (await reader.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys == []
    await reader.QueryEvidence(admin_pb2.QueryEvidenceRequest())
    code, message = await _code(reader.CreateApiKey(admin_pb2.CreateApiKeyRequest(name="x")))
    assert (code, message) == (grpc.StatusCode.PERMISSION_DENIED, "role 'auditor' may not call CreateApiKey")
    await ops.RevokeAdminToken(admin_pb2.RevokeAdminTokenRequest(id=auditor.info.id))
    code, _ = await _code(reader.ListApiKeys(admin_pb2.ListApiKeysRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # Platform matters stay out of reach.
    for call in (
        ops.CreateTenant(admin_pb2.CreateTenantRequest(name="other")),
        ops.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", tier="platinum")),
        ops.ApplyPolicy(admin_pb2.ApplyPolicyRequest(document='{"default_model": "small"}')),
        ops.ListNodes(admin_pb2.ListNodesRequest()),
        ops.ListAdminMtlsIdentities(admin_pb2.ListAdminMtlsIdentitiesRequest()),
    ):
        assert (await _code(call))[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_a_platform_auditor_reads_everything_and_changes_nothing(admin: Admin) -> None:
    await admin.seed("acme")
    created = await admin.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="aud", role="auditor"))
    assert created.info.tenant_id == ""
    aud = admin.with_token(created.token)
    assert [t.name for t in (await aud.ListTenants(admin_pb2.ListTenantsRequest())).tenants] == ["acme"]
    await aud.ListNodes(admin_pb2.ListNodesRequest())
    await aud.ListAdminAudit(admin_pb2.ListAdminAuditRequest())
    assert (await aud.ListProviders(admin_pb2.ListProvidersRequest())).providers[0].credential.env
    for call in (
        aud.CreateTenant(admin_pb2.CreateTenantRequest(name="other")),
        aud.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="x", role="auditor")),
        aud.AddAdminMtlsIdentity(
            admin_pb2.AddAdminMtlsIdentityRequest(uri="spiffe://x/y", name="x", role="auditor")
        ),
    ):
        assert (await _code(call))[0] == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("request_fields", "status", "message"),
    [
        (
            {"name": "x", "role": "root"},
            "INVALID_ARGUMENT",
            "role: must be one of platform_admin, tenant_admin, auditor",
        ),
        ({"name": "x", "role": "tenant_admin"}, "INVALID_ARGUMENT", "tenant: required for a tenant_admin"),
        (
            {"name": "x", "role": "platform_admin", "tenant": "acme"},
            "INVALID_ARGUMENT",
            "tenant: a platform_admin is not bound to a tenant: leave it empty",
        ),
        ({"name": "x", "role": "auditor", "tenant": "nope"}, "NOT_FOUND", "tenant: tenant 'nope' not found"),
        ({"name": "has space", "role": "auditor"}, "INVALID_ARGUMENT", "name: must start with"),
        ({"name": "n" * 500, "role": "auditor"}, "INVALID_ARGUMENT", "name"),
    ],
)
async def test_bad_token_requests_are_refused_precisely_and_create_nothing(
    admin: Admin,
    control_plane: RunningControlPlane,
    request_fields: dict[str, str],
    status: str,
    message: str,
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    code, details = await _code(admin.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(**request_fields)))
    assert code.name == status
    assert details.startswith(message)
    assert len(details) < 300
    assert sql_rows(control_plane.database_url, "SELECT count(*) FROM admin_tokens") == [(1,)]


async def test_admin_tokens_through_the_cli(admin: Admin, control_plane: RunningControlPlane) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))

    async def cli(token: str, *args: str) -> tuple[int, str, str]:
        return await admin_cli(control_plane.address, token, *args)

    code, out, err = await cli(
        control_plane.token, "admins", "token", "create", "ops", "--role", "tenant_admin", "--tenant", "acme"
    )
    assert code == 0, err
    ops = out.strip().splitlines()[-1].split()[-1]
    assert ops.startswith("sbxadm_")
    code, out, err = await cli(ops, "admins", "token", "create", "reader", "--role", "auditor")
    assert code == 0, err
    code, out, err = await cli(ops, "admins", "token", "list")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split()[1:3] for line in lines[1:]] == [["ops", "tenant_admin"], ["reader", "auditor"]]
    assert ops not in out
    reader_id = lines[2].split()[0]
    code, out, err = await cli(ops, "admins", "token", "revoke", reader_id)
    assert code == 0, err
    code, out, err = await cli(ops, "admins", "token", "create", "boss", "--role", "platform_admin")
    assert code != 0
    assert "PERMISSION_DENIED" in err
    code, out, err = await cli(ops, "admins", "token", "revoke", str(uuid.uuid4()))
    assert code != 0
    assert "NOT_FOUND" in err


async def test_a_deactivated_tenants_admin_identities_are_refused_until_it_is_reactivated(
    admin: Admin,
) -> None:
    """An inactive tenant's callers are refused on the node; its admin identities (tenant
    admins and its auditors, by token) are refused on the admin API with one precise message,
    while platform admins still manage it, and reactivate it."""
    await admin.seed("acme")
    ops = admin.with_token(
        (
            await admin.CreateAdminToken(
                admin_pb2.CreateAdminTokenRequest(name="acme-ops", role="tenant_admin", tenant="acme")
            )
        ).token
    )
    reader = admin.with_token(
        (await ops.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="acme-aud", role="auditor"))).token
    )
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", active=False))
    for call in (
        ops.ListApiKeys(admin_pb2.ListApiKeysRequest()),
        ops.CreateApiKey(admin_pb2.CreateApiKeyRequest(name="svc")),
        ops.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="again", role="tenant_admin")),
        reader.QueryEvidence(admin_pb2.QueryEvidenceRequest()),
        reader.GetTenant(admin_pb2.GetTenantRequest(tenant="acme")),
    ):
        assert await _code(call) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "tenant 'acme' is not active: its admin identities are refused until a platform admin"
            " reactivates it",
        )
    # The platform admin still manages the tenant: nothing was created by the refused calls.
    assert (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant="acme"))).keys == []
    assert {t.name for t in (await admin.ListAdminTokens(admin_pb2.ListAdminTokensRequest())).tokens} == {
        "tests",
        "acme-ops",
        "acme-aud",
    }
    # The audit trail names who was refused.
    refused = await admin.ListAdminAudit(admin_pb2.ListAdminAuditRequest(actor="admin:acme-ops"))
    assert {(e.action, e.result) for e in refused.entries} >= {
        ("ListApiKeys", "PERMISSION_DENIED"),
        ("CreateApiKey", "PERMISSION_DENIED"),
    }
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", active=True))
    assert (await ops.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys == []
