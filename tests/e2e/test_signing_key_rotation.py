"""Signing-key rotation and revocation reach real nodes, with no failed request on the way.

A node configured with only the control plane's first key learns the new key from a
dual-signed snapshot (a statement by a key it already trusts), keeps it across a
restart, drops the old key when a snapshot revokes it, and refuses an envelope
signed only by the revoked key with a NACK that says so.
"""

from __future__ import annotations

import asyncio
import stat
import tempfile
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.app import DataPlaneNode, NodeSettings
from dataplane.snapshot.envelope import key_id_for
from dataplane.snapshot.trust import TRUST_FILE
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.e2e.test_config_push import _converged, _resign, _seed, _with_version
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually


async def _node(control_plane: RunningControlPlane, node_id: str, data_dir: Path) -> DataPlaneNode:
    return DataPlaneNode(
        NodeSettings(
            listen="127.0.0.1:0",
            **(await control_plane.node_link()),
            trust_keys=(control_plane.trust_key_path,),
            node_id=node_id,
            data_dir=data_dir,
            drain_seconds=2.0,
            sync_backoff_base=0.05,
            sync_backoff_cap=0.5,
        )
    )


async def _closed_loop(node: DataPlaneNode, api_key: str, stop: asyncio.Event, served: set[int]) -> list[str]:
    """Infer calls one after another until ``stop``; adds each answer's snapshot version to
    ``served`` and returns the failures."""
    failures = []
    request = infer_pb2.InferRequest(
        messages=[infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text="hi")])]
    )
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        while not stop.is_set():
            try:
                response = await stub.Infer(
                    request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
                )
                served.add(response.snapshot_version)
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
    return failures


async def _nack(admin: Admin, node_id: str, version: int) -> admin_pb2.Node:
    async def nacked() -> admin_pb2.Node:
        nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
        (n,) = [n for n in nodes if n.node_id == node_id]
        assert n.last_nack_version == version
        return n

    return await eventually(nacked, message=f"NACK of v{version} by {node_id}")


async def test_rotate_then_revoke_reaches_the_node_with_no_failed_request(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, private_tmp: Path
) -> None:
    assert control_plane.cp.signer is not None
    assert control_plane.cp.sync is not None
    old_key = control_plane.cp.signer
    api_key = await _seed(admin, simulator)
    data_dir = Path(tempfile.mkdtemp(prefix="rot-1-", dir=private_tmp))
    node = await _node(control_plane, "rot-1", data_dir)
    await node.start()
    try:
        first = await _converged(admin, "rot-1")
        stop = asyncio.Event()
        served: set[int] = set()
        loop = asyncio.create_task(_closed_loop(node, api_key, stop, served))
        await eventually(lambda: first in served, message="requests on the first snapshot")

        rotated = await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
        new_id = rotated.key.key_id
        assert new_id != old_key.key_id
        assert rotated.key.state == "active"
        assert list(rotated.retiring) == [old_key.key_id]
        dual_version = await _converged(admin, "rot-1")
        assert dual_version >= rotated.snapshot_version
        await eventually(lambda: dual_version in served, message="requests on the dual-signed snapshot")
        dual = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
        assert [s.key_id for s in dual.signatures] == [new_id, old_key.key_id]
        assert new_id in node.store.trust.state.keys  # learned from the statement signed by the old key
        trust_file = data_dir / "snapshot" / TRUST_FILE
        assert stat.S_IMODE(trust_file.stat().st_mode) == 0o600
        keys = {
            k.key_id: k.state for k in (await admin.ListSigningKeys(admin_pb2.ListSigningKeysRequest())).keys
        }
        assert keys == {old_key.key_id: "retiring", new_id: "active"}

        revoked = await admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=old_key.key_id))
        assert revoked.key.state == "revoked"
        good = await _converged(admin, "rot-1")
        assert good >= revoked.snapshot_version
        single = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
        assert [s.key_id for s in single.signatures] == [new_id]
        payload = snapshot_pb2.Snapshot.FromString(single.payload)
        assert {k.key_id: k.state for k in payload.trusted_keys} == {
            old_key.key_id: snapshot_pb2.TRUSTED_KEY_STATE_REVOKED,
            new_id: snapshot_pb2.TRUSTED_KEY_STATE_ACTIVE,
        }
        assert old_key.key_id not in node.store.trust.state.keys
        assert old_key.key_id in node.store.trust.state.revoked

        # The revoked key (the node's own --trust-key) can no longer sign for it.
        forged = _resign(_with_version(single.payload, good + 5), old_key.private_key)
        assert control_plane.cp.sync.inject(forged, "rot-1") == 1
        status = await _nack(admin, "rot-1", good + 5)
        assert f"signed only by revoked key {old_key.key_id}" in status.last_nack_reason
        assert node.store.version == good

        await eventually(lambda: good in served, message="requests on the snapshot after the revoke")
        stop.set()
        assert await loop == []
    finally:
        await node.stop()

    # Restarted with only the old (now revoked) --trust-key: the persisted statements are
    # verified again and the last-known-good, signed only by the new key, still loads.
    again = await _node(control_plane, "rot-1", data_dir)
    await again.start()
    try:
        assert again.store.version == good
        assert set(again.store.trust.state.keys) == {new_id}
    finally:
        await again.stop()


async def test_a_key_named_in_a_payload_signed_by_an_untrusted_key_is_not_learned(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, connected_node: NodeFactory
) -> None:
    assert control_plane.cp.sync is not None
    await _seed(admin, simulator)
    node = await connected_node("rot-2")
    good = await _converged(admin, "rot-2")
    current = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())

    intruder = Ed25519PrivateKey.generate()
    intruder_id = key_id_for(intruder.public_key())
    snapshot = snapshot_pb2.Snapshot.FromString(_with_version(current.payload, good + 1))
    snapshot.trusted_keys.add(
        key_id=intruder_id,
        ed25519_public_key=intruder.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        state=snapshot_pb2.TRUSTED_KEY_STATE_ACTIVE,
    )
    # Signed by the very key it names: a signature never makes its own key trusted.
    statement = _resign(snapshot.SerializeToString(deterministic=True), intruder)
    assert control_plane.cp.sync.inject(statement, "rot-2") == 1
    status = await _nack(admin, "rot-2", good + 1)
    assert "no signature by a trusted key" in status.last_nack_reason
    assert intruder_id not in node.store.trust.state.keys
    assert node.store.version == good
    assert not (node.settings.data_dir / "snapshot" / TRUST_FILE).exists()
