"""The signing-key Admin RPCs: rotate, list, revoke; who may call them; what they refuse."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from dataplane.snapshot.envelope import verify
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane


async def _code(awaitable: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


async def _states(admin: Admin) -> dict[str, str]:
    keys = (await admin.ListSigningKeys(admin_pb2.ListSigningKeysRequest())).keys
    return {k.key_id: k.state for k in keys}


async def test_rotate_dual_signs_until_revoke_and_both_are_audited(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    first = control_plane.key_id
    assert await _states(admin) == {first: "active"}
    rotated = await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
    second = rotated.key.key_id
    assert await _states(admin) == {first: "retiring", second: "active"}
    dual = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    assert dual.payload
    assert [s.key_id for s in dual.signatures] == [second, first]
    # A node that only trusts the first key still accepts it.
    assert verify(dual, {first: control_plane.public_key}) == first

    revoked = await admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=first))
    assert revoked.snapshot_version > rotated.snapshot_version
    assert revoked.key.HasField("revoked_at")
    assert await _states(admin) == {first: "revoked", second: "active"}
    single = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    assert [s.key_id for s in single.signatures] == [second]

    engine = sa.create_engine(control_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            audit = conn.execute(
                sa.text(
                    "SELECT method, target, result FROM audit_log WHERE method LIKE '%SigningKey' ORDER BY at"
                )
            ).fetchall()
    finally:
        engine.dispose()
    assert [tuple(r) for r in audit] == [
        ("RotateSigningKey", "", "OK"),
        ("RevokeSigningKey", f"key_id={first}", "OK"),
    ]


async def test_revoke_refuses_the_active_key_an_unknown_one_and_a_revoked_one(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    version = await admin.latest_version()
    code, message = await _code(
        admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=control_plane.key_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "active key: rotate first" in message
    code, message = await _code(admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "nope" in message
    code, message = await _code(admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "key_id" in message
    code, message = await _code(admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id="x" * 5000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(message) < 200
    assert await admin.latest_version() == version  # nothing was published

    await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
    await admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=control_plane.key_id))
    code, message = await _code(
        admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=control_plane.key_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already revoked" in message


async def test_a_viewer_may_list_keys_but_not_rotate_or_revoke(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    assert control_plane.cp.admin is not None
    _, token = await control_plane.cp.admin.create_token("auditor", role="auditor")
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        viewer = Admin(admin_pb2_grpc.AdminServiceStub(channel), (("authorization", f"Bearer {token}"),))
        assert await _states(viewer) == {control_plane.key_id: "active"}
        for call in (
            viewer.RotateSigningKey(admin_pb2.RotateSigningKeyRequest()),
            viewer.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=control_plane.key_id)),
        ):
            code, _ = await _code(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED
    assert await _states(admin) == {control_plane.key_id: "active"}
