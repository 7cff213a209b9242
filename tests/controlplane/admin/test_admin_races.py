"""Admin identities written outside the config batch (admin tokens, admin mTLS identities)
check, then insert, in a transaction of their own: another writer can commit the same row
in between. The loser gets the status the check would have given it, never INTERNAL.

The interleaving is made deterministic with a second connection that holds the competing
row uncommitted: the server's check does not see it, its insert waits on it, and the
test commits it once the server is seen waiting (``pg_stat_activity``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
import sqlalchemy as sa

from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane, sql_rows
from tests.helpers import eventually

URI = "spiffe://corp.test/admin/alice"


@contextmanager
def held(database_url: str, sql: str, **params: object) -> Iterator[sa.Connection]:
    """``sql`` run in a transaction left open until the block commits it."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql), params)
            yield conn
    finally:
        engine.dispose()


def _waiting_on_lock(database_url: str, table: str) -> bool:
    rows = sql_rows(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        f"AND query LIKE 'INSERT INTO {table}%'",
    )
    return bool(rows[0][0])


async def test_a_uri_mapped_by_a_concurrent_call_is_already_exists(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    url = control_plane.database_url
    insert = "INSERT INTO admin_mtls_identities (id, uri, name, role) VALUES (:id, :uri, 'bob', 'auditor')"
    with held(url, insert, id=uuid.uuid4(), uri=URI) as other:
        call = asyncio.ensure_future(
            admin.AddAdminMtlsIdentity(
                admin_pb2.AddAdminMtlsIdentityRequest(uri=URI, name="alice", role="auditor")
            )
        )
        await eventually(lambda: _waiting_on_lock(url, "admin_mtls_identities"), message="insert waits")
        other.commit()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.details() == f"admin mtls identity {URI!r} already exists"
    listed = await admin.ListAdminMtlsIdentities(admin_pb2.ListAdminMtlsIdentitiesRequest())
    assert [(i.uri, i.name) for i in listed.identities] == [(URI, "bob")]


async def test_a_token_for_a_tenant_deleted_meanwhile_is_not_found(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    url = control_plane.database_url
    # Locks the tenant row as a concurrent DeleteTenant would; the token's foreign key waits on it.
    with held(url, "DELETE FROM tenants WHERE name = 'acme'") as other:
        call = asyncio.ensure_future(
            admin.CreateAdminToken(
                admin_pb2.CreateAdminTokenRequest(name="ops", role="tenant_admin", tenant="acme")
            )
        )
        await eventually(lambda: _waiting_on_lock(url, "admin_tokens"), message="insert waits")
        other.commit()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "tenant: tenant 'acme' not found"
    assert sql_rows(url, "SELECT count(*) FROM admin_tokens WHERE name = 'ops'")[0][0] == 0
