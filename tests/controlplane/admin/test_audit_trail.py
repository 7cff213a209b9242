"""The admin audit trail: one row per admin call (allowed, refused, failed) naming the actor
with its role and tenant, the action, the target, the tenant it was about and the result;
digests of the changed object before and after; never a secret; listed through the Admin
API and ``signalbox admin audit list`` with filters, a tenant's identities seeing their
tenant's rows only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin, admin_cli
from tests.fixtures.postgres import RunningControlPlane, sql_rows

HEX64 = 64


async def _rows(admin: Admin, **filters: object) -> list[admin_pb2.AdminAuditEntry]:
    reply = await admin.ListAdminAudit(admin_pb2.ListAdminAuditRequest(limit=1000, **filters))  # type: ignore[arg-type]
    return list(reversed(reply.entries))  # oldest first


async def test_each_call_is_one_row_with_its_actor_target_result_and_digests(admin: Admin) -> None:
    await admin.seed("acme")
    acme = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", tier="silver"))
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", tier="bronze"))
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="k"))
    await admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=key.key.id))
    acme_admin = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="acme-ops", role="tenant_admin", tenant="acme")
    )
    tenant_admin = admin.with_token(acme_admin.token)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tenant_admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant="acme"))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await tenant_admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=key.key.id))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND

    rows = await _rows(admin)
    by_action = {r.action: r for r in rows}
    first, second = [r for r in rows if r.action == "UpdateTenant"]
    # An update: the object before and after, and the second starts where the first ended.
    assert len(first.before_sha256) == len(first.after_sha256) == HEX64
    assert first.before_sha256 != first.after_sha256
    assert second.before_sha256 == first.after_sha256
    assert (first.actor, first.actor_role, first.actor_tenant) == ("admin:tests", "platform_admin", "")
    assert (first.target, first.tenant, first.result) == ("tenant=acme", acme.id, "OK")
    # A create has nothing before; a delete nothing after.
    assert (by_action["CreateApiKey"].before_sha256, by_action["CreateApiKey"].after_sha256) == ("", "")
    deleted = [r for r in rows if r.action == "DeleteApiKey"]
    assert len(deleted[0].before_sha256) == HEX64
    assert deleted[0].after_sha256 == ""
    assert deleted[0].tenant == acme.id
    # Refused and failed calls are rows too, with the tenant-bound actor.
    assert [
        (r.result, r.actor, r.actor_role, r.actor_tenant) for r in rows if r.actor == "admin:acme-ops"
    ] == [
        ("PERMISSION_DENIED", "admin:acme-ops", "tenant_admin", acme.id),
        ("NOT_FOUND", "admin:acme-ops", "tenant_admin", acme.id),
    ]
    # Reads leave digests empty.
    assert by_action["GetTenant"].before_sha256 == by_action["GetTenant"].after_sha256 == ""


async def test_no_secret_reaches_the_audit_trail(admin: Admin, control_plane: RunningControlPlane) -> None:
    await admin.seed("acme")
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="k"))
    token = await admin.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="aud", role="auditor"))
    await admin.with_token(token.token).ListTenants(admin_pb2.ListTenantsRequest())
    wrong = "sbxadm_" + "x" * 43
    with pytest.raises(grpc.aio.AioRpcError):
        await admin.with_token(wrong).ListTenants(admin_pb2.ListTenantsRequest())
    await admin.RevokeAdminToken(admin_pb2.RevokeAdminTokenRequest(id=token.info.id))
    text = "\n".join(str(tuple(r)) for r in sql_rows(control_plane.database_url, "SELECT * FROM audit_log"))
    assert "CreateApiKey" in text
    assert "RevokeAdminToken" in text
    for secret in (key.secret, token.token, wrong, control_plane.token):
        assert secret not in text
        assert secret[12:] not in text


async def _cli(cp: RunningControlPlane, token: str, *args: str) -> tuple[int, str, str]:
    return await admin_cli(cp.address, token, *args)


async def test_audit_list_filters_and_a_tenant_admin_sees_its_tenants_rows_only(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.seed("acme")
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="globex"))
    acme = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="acme-ops", role="tenant_admin", tenant="acme")
    )
    await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="globex", name="g"))
    await admin.with_token(acme.token).CreateApiKey(admin_pb2.CreateApiKeyRequest(name="a"))

    code, out, err = await _cli(
        control_plane, control_plane.token, "audit", "list", "--json", "--action", "CreateApiKey"
    )
    assert code == 0, err
    entries = json.loads(out)["entries"]
    assert [(e["actor"], e["result"]) for e in entries] == [("admin:acme-ops", "OK"), ("admin:tests", "OK")]

    code, out, err = await _cli(
        control_plane, control_plane.token, "audit", "list", "--actor", "admin:acme-ops"
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["AT", "ACTOR", "ROLE", "ACTION"]
    # AT is a date and a time: the action is the fifth word.
    assert [line.split()[4] for line in lines[1:]] == ["CreateApiKey"]

    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    code, out, err = await _cli(
        control_plane, control_plane.token, "--json", "audit", "list", "--since", future
    )
    assert code == 0, err
    assert json.loads(out).get("entries", []) == []

    code, out, err = await _cli(control_plane, control_plane.token, "audit", "list", "--limit", "2")
    assert code == 0, err
    assert "more rows match" in err

    # The tenant admin: its tenant's rows, whoever made them; none of globex's.
    code, out, err = await _cli(control_plane, acme.token, "--json", "audit", "list")
    assert code == 0, err
    entries = json.loads(out)["entries"]
    acme_id = (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))).id
    assert entries
    assert all(acme_id in (e.get("tenant"), e.get("actor_tenant")) for e in entries)
    assert {e["action"] for e in entries} >= {"CreateApiKey", "CreateAdminToken"}
    code, out, err = await _cli(control_plane, acme.token, "audit", "list", "--tenant", "globex")
    assert code != 0
    assert "NOT_FOUND" in err

    # Bad input: a precise refusal, nothing listed.
    code, out, err = await _cli(control_plane, control_plane.token, "audit", "list", "--since", "yesterday")
    assert code != 0
    assert "--since" in err
