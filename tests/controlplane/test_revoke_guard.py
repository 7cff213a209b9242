"""Revoking the retiring signing key is refused while a node has not yet applied a snapshot
signed by the new key: it would never be able to verify another snapshot."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually


async def _applied(admin: Admin, node_id: str, version: int) -> None:
    async def acked() -> bool:
        nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
        return any(n.node_id == node_id and n.applied_version == version for n in nodes)

    await eventually(acked, message=f"{node_id} to ACK v{version}")


async def test_revoke_waits_for_every_node_to_apply_a_snapshot_signed_by_the_new_key(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: Any
) -> None:
    assert control_plane.cp.signer is not None
    old = control_plane.cp.signer.key_id
    slow = await sync_nodes("slow-node")
    quick = await sync_nodes("quick-node")
    for node in (slow, quick):
        first = await node.next_envelope()
        node.ack(first, node.verified(first).version)
        await _applied(admin, node.node_id, node.verified(first).version)

    rotated = await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
    dual = await quick.next_envelope()
    assert quick.verified(dual).version == rotated.snapshot_version
    quick.ack(dual, rotated.snapshot_version)
    await _applied(admin, "quick-node", rotated.snapshot_version)
    pending = await slow.next_envelope()  # received, not yet applied

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=old))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "strand 1 node(s)" in details
    assert "slow-node (v" in details
    assert "quick-node" not in details
    assert rotated.key.key_id in details
    keys = {k.key_id: k.state for k in (await admin.ListSigningKeys(admin_pb2.ListSigningKeysRequest())).keys}
    assert keys[old] == "retiring", "a refused revoke must change nothing"
    assert await admin.latest_version() == rotated.snapshot_version, "a refused revoke must publish nothing"

    slow.ack(pending, rotated.snapshot_version)
    await _applied(admin, "slow-node", rotated.snapshot_version)
    revoked = await admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=old))
    assert revoked.key.state == "revoked"


async def test_force_revokes_although_a_node_would_be_stranded(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: Any
) -> None:
    assert control_plane.cp.signer is not None
    old = control_plane.cp.signer.key_id
    node = await sync_nodes("left-behind")
    first = await node.next_envelope()
    node.ack(first, node.verified(first).version)
    await _applied(admin, "left-behind", node.verified(first).version)
    await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())

    revoked = await admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=old, force=True))
    assert revoked.key.state == "revoked"
    (newest,) = (await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(limit=1))).snapshots
    assert newest.version == revoked.snapshot_version
    assert newest.reason == f"revoke signing key {old} (forced)", "the override must be on the record"
