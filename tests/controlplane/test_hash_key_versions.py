"""API-key hash key versions on the control plane: databases of before migration 0022 keep
their one key as version 1; ``signalbox admin api-key-hash-key list|rotate|retire`` as a real
process; who may call what; every call audited, never with the key."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
import sqlalchemy as sa
from alembic import command

from controlplane.db.migrate import alembic_config, upgrade_head
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin, admin_cli
from tests.fixtures.postgres import RunningControlPlane


def test_a_database_of_before_0022_keeps_its_key_as_version_1(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0021")
    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    tenant, hmac_key, sha_key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO api_key_hash_key (id, sealed_key, kek_id) VALUES (1, :blob, 'kek-1')"),
                {"blob": b"sealed"},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO tenants (id, name, tier, active, labels) VALUES (:id, 'acme', '', true, '{}')"
                ),
                {"id": tenant},
            )
            insert = sa.text(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_hmac, secret_sha256, scopes) "
                "VALUES (:id, :tenant, '', 'sbx_', :hmac, :sha, '[]')"
            )
            conn.execute(insert, {"id": hmac_key, "tenant": tenant, "hmac": b"\x01", "sha": None})
            conn.execute(insert, {"id": sha_key, "tenant": tenant, "hmac": None, "sha": b"\x02"})
        upgrade_head(empty_database_url)
        with engine.connect() as conn:
            keys = dict(conn.execute(sa.text("SELECT id, hash_key_version FROM api_keys")).all())
            versions = conn.execute(sa.text("SELECT id, retired_at FROM api_key_hash_key")).all()
        assert keys == {hmac_key: 1, sha_key: None}  # a digest of the earlier format has none
        assert [tuple(v) for v in versions] == [(1, None)]
        # A digest without its version, or a retired version that kept its key: refused.
        with (
            pytest.raises(sa.exc.IntegrityError, match="ck_api_keys_hmac_has_version"),
            engine.begin() as conn,
        ):
            conn.execute(
                sa.text("UPDATE api_keys SET hash_key_version = NULL WHERE id = :id"), {"id": hmac_key}
            )
        with (
            pytest.raises(sa.exc.IntegrityError, match="ck_api_key_hash_key_retired_forgotten"),
            engine.begin() as conn,
        ):
            conn.execute(sa.text("UPDATE api_key_hash_key SET retired_at = now()"))
        command.downgrade(config, "0021")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM api_keys")).scalar_one() == 2
    finally:
        engine.dispose()


async def test_admin_cli_lists_rotates_and_retires_versions(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    async def run(*args: str) -> tuple[int, str, str]:
        return await admin_cli(control_plane.address, control_plane.token, "api-key-hash-key", *args)

    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    kept = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="v1"))
    code, out, err = await run("rotate")
    assert code == 0, err
    assert out.startswith("API-key hash key version 2 active (published v")
    code, out, err = await run("list")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["VERSION", "STATE", "CREATED", "RETIRED", "USABLE", "KEYS"]
    assert [(r[0], r[1], r[-1]) for r in rows[1:]] == [("1", "retiring", "1"), ("2", "active", "0")]
    code, out, err = await run("retire", "1")
    assert code != 0
    assert "FAILED_PRECONDITION" in err
    assert "version 1 is still used by 1 usable API keys" in err
    code, _, err = await run("retire", "0")
    assert code == 2
    assert "expected 1..4294967295" in err
    await admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=kept.key.id))  # version 1 retires with it
    code, out, err = await run("retire", "1")
    assert code == 0, err
    assert out.startswith("API-key hash key version 1 retired (published v")
    code, out, err = await admin_cli(
        control_plane.address, control_plane.token, "--json", "api-key-hash-key", "list"
    )
    assert code == 0, err
    listed = json.loads(out)["versions"]
    assert [(v["version"], v["state"]) for v in listed] == [(1, "retired"), (2, "active")]
    assert "retiredAt" in listed[0] or "retired_at" in listed[0]

    # Every call audited (the refused one too), with nothing of any key.
    entries = (await admin.ListAdminAudit(admin_pb2.ListAdminAuditRequest(limit=100))).entries
    audited = [(e.action, e.target, e.result) for e in reversed(entries) if "HashKey" in e.action]
    assert [(a, r) for a, _, r in audited] == [
        ("RotateApiKeyHashKey", "OK"),
        ("ListApiKeyHashKeys", "OK"),
        ("RetireApiKeyHashKey", "FAILED_PRECONDITION"),
        ("RetireApiKeyHashKey", "OK"),
        ("ListApiKeyHashKeys", "OK"),
    ]
    assert control_plane.cp.api_key_hasher is not None
    key = control_plane.cp.api_key_hasher.key
    for entry in entries:
        text = str(entry)
        assert key.hex() not in text
        assert repr(key) not in text


async def test_only_platform_admins_change_versions_and_tenant_admins_see_none(admin: Admin) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    auditor = admin.with_token(
        (await admin.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="aud", role="auditor"))).token
    )
    tenant_admin = admin.with_token(
        (
            await admin.CreateAdminToken(
                admin_pb2.CreateAdminTokenRequest(name="ops", role="tenant_admin", tenant="acme")
            )
        ).token
    )
    assert [
        v.version for v in (await auditor.ListApiKeyHashKeys(admin_pb2.ListApiKeyHashKeysRequest())).versions
    ] == [1]
    for caller, calls in (
        (auditor, ("rotate", "retire")),
        (tenant_admin, ("list", "rotate", "retire")),
    ):
        for name in calls:
            request = {
                "list": lambda c: c.ListApiKeyHashKeys(admin_pb2.ListApiKeyHashKeysRequest()),
                "rotate": lambda c: c.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest()),
                "retire": lambda c: c.RetireApiKeyHashKey(admin_pb2.RetireApiKeyHashKeyRequest(version=1)),
            }[name]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await request(caller)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
    assert [
        v.version for v in (await admin.ListApiKeyHashKeys(admin_pb2.ListApiKeyHashKeysRequest())).versions
    ] == [1]


async def test_a_version_out_of_range_is_refused_naming_the_range_the_column_holds(admin: Admin) -> None:
    # Versions are int32 row ids: the message said 1..4294967295, a range no request reaches
    # (above 2147483647 the admin request check refuses first, saying so).
    for version, message in (
        (0, "version: must be 1..2147483647 (got 0)"),
        (2**31, "version: at most 2147483647"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.RetireApiKeyHashKey(admin_pb2.RetireApiKeyHashKeyRequest(version=version))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (refused.value.details() or "")
