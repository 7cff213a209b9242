"""The admin listener through server reflection: listed only to an admin (any role), who can
then call the admin API with nothing but what reflection told it; each stream is audited."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests import reflection_client
from tests.fixtures.postgres import RunningControlPlane, sql_rows

ADMIN = "signalbox.api.admin.v1.AdminService"


async def test_reflection_lists_the_admin_api_only_to_an_admin(control_plane: RunningControlPlane) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        await asyncio.to_thread(reflection_client.list_services, control_plane.address)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "admin token" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as wrong:
        await asyncio.to_thread(
            reflection_client.list_services, control_plane.address, (("authorization", "Bearer sbxa_nope"),)
        )
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED

    assert control_plane.cp.admin is not None
    _, auditor = await control_plane.cp.admin.create_token("auditor", role="auditor")
    services = await asyncio.to_thread(
        reflection_client.list_services, control_plane.address, (("authorization", f"Bearer {auditor}"),)
    )
    assert services == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        ADMIN,
        "signalbox.api.config.v1.NodeEnrollmentService",
    ]
    created = await asyncio.to_thread(
        reflection_client.call,
        control_plane.address,
        ADMIN,
        "CreateTenant",
        {"name": "reflected"},
        control_plane.metadata,
    )
    assert created["name"] == "reflected"
    listed = await asyncio.to_thread(
        reflection_client.call, control_plane.address, ADMIN, "ListTenants", {}, control_plane.metadata
    )
    assert "reflected" in [t["name"] for t in listed["tenants"]]

    rows = sql_rows(
        control_plane.database_url,
        "SELECT actor, method, result FROM audit_log WHERE method LIKE '%ServerReflection%' ORDER BY id",
    )
    method = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert [tuple(r) for r in rows[:3]] == [
        ("anonymous", method, "UNAUTHENTICATED"),
        ("anonymous", method, "UNAUTHENTICATED"),
        ("admin:auditor", method, "OK"),
    ]
    # The calls' own streams (how many is the reflection client's business).
    assert rows[3:]
    assert {tuple(r) for r in rows[3:]} == {("admin:tests", method, "OK")}
