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
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.app import DataPlaneNode
from dataplane.node_settings import NodeSettings
from dataplane.snapshot.envelope import STATEMENT_PAYLOAD_TYPE, key_id_for, pae
from dataplane.snapshot.trust import TRUST_FILE
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.cli import main
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.e2e.test_config_push import _converged, _resign, _seed, _with_version
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually


def _operator_key(control_plane: RunningControlPlane, directory: Path) -> Path:
    """A copy of the key the control plane signs with now, as an operator installs it on a
    node (the control plane's own trust-key.pub follows the active key after a rotation)."""
    copy = directory / f"operator-{control_plane.key_id}.pub"
    copy.write_bytes(control_plane.trust_key_path.read_bytes())
    return copy


async def _node(
    control_plane: RunningControlPlane, node_id: str, data_dir: Path, trust_key: Path | None = None
) -> DataPlaneNode:
    return DataPlaneNode(
        NodeSettings(
            listen="127.0.0.1:0",
            **(await control_plane.node_link()),
            trust_keys=(trust_key or control_plane.trust_key_path,),
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
    admin: Admin,
    control_plane: RunningControlPlane,
    simulator: Simulator,
    private_tmp: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert control_plane.cp.signer is not None
    assert control_plane.cp.sync is not None
    old_key = control_plane.cp.signer
    operator_key = _operator_key(control_plane, private_tmp)
    api_key = await _seed(admin, simulator)
    data_dir = Path(tempfile.mkdtemp(prefix="rot-1-", dir=private_tmp))
    node = await _node(control_plane, "rot-1", data_dir, operator_key)
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
    again = await _node(control_plane, "rot-1", data_dir, operator_key)
    await again.start()
    try:
        assert again.store.version == good
        assert set(again.store.trust.state.keys) == {new_id}
    finally:
        await again.stop()

    # `dataplane verify` answers what this node would. With only the operator's (old) key, the
    # post-revoke snapshot verifies through its trust chain; without the chain it has no
    # trusted signature, unless verify uses the node's data dir (the keys that node learned),
    # where the forgery signed by the revoked key is refused as such.
    pin, bare_pin, forged_pin = (
        private_tmp / "single.pin",
        private_tmp / "bare.pin",
        private_tmp / "forged.pin",
    )
    pin.write_bytes(single.SerializeToString())
    bare = snapshot_pb2.SignedEnvelope()
    bare.CopyFrom(single)
    del bare.trust_chain[:]
    bare_pin.write_bytes(bare.SerializeToString())
    forged_pin.write_bytes(forged.SerializeToString())
    trust = ["--trust-key", str(operator_key)]
    verify = ["dataplane", "verify", *trust]
    assert await asyncio.to_thread(main, [*verify, "--snapshot", str(pin)]) == 0
    assert f"signed-by: {new_id}" in capsys.readouterr().out
    assert await asyncio.to_thread(main, [*verify, "--snapshot", str(bare_pin)]) == 1
    assert "no signature by a trusted key" in capsys.readouterr().out
    pin = bare_pin
    with_dir = [*verify, "--data-dir", str(data_dir)]
    assert await asyncio.to_thread(main, [*with_dir, "--snapshot", str(pin)]) == 0
    assert f"signed-by: {new_id}" in capsys.readouterr().out
    assert await asyncio.to_thread(main, [*with_dir, "--snapshot", str(forged_pin)]) == 1
    assert f"signed only by revoked key {old_key.key_id}" in capsys.readouterr().out


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


async def test_a_node_away_during_rotate_and_revoke_follows_the_trust_chain_when_back(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, private_tmp: Path
) -> None:
    """The node never sees the dual-signed snapshot: when it returns, the only snapshot it
    gets is signed by the new key alone. The trust chain in that envelope leads it there."""
    assert control_plane.cp.signer is not None
    old_id = control_plane.cp.signer.key_id
    operator_key = _operator_key(control_plane, private_tmp)
    api_key = await _seed(admin, simulator)
    data_dir = Path(tempfile.mkdtemp(prefix="away-", dir=private_tmp))
    node = await _node(control_plane, "away-1", data_dir, operator_key)
    await node.start()
    try:
        await _converged(admin, "away-1")
    finally:
        await node.stop()

    rotated = await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
    await admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=old_id))
    latest = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    assert [s.key_id for s in latest.signatures] == [rotated.key.key_id]
    assert len(latest.trust_chain) == 2  # the rotation, then the revocation

    back = await _node(control_plane, "away-1", data_dir, operator_key)
    await back.start()
    try:
        version = await _converged(admin, "away-1")
        assert back.store.version == version
        assert set(back.store.trust.state.keys) == {rotated.key.key_id}
        assert old_id in back.store.trust.state.revoked
        request = infer_pb2.InferRequest(
            messages=[infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text="hi")])]
        )
        async with grpc.aio.insecure_channel(back.address) as channel:
            answer = await infer_pb2_grpc.InferServiceStub(channel).Infer(
                request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
            )
        assert answer.snapshot_version == version
    finally:
        await back.stop()


async def test_an_air_gapped_pin_signed_by_the_new_key_loads_on_a_site_that_trusts_the_old_one(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, private_tmp: Path
) -> None:
    assert control_plane.cp.signer is not None
    old_id = control_plane.cp.signer.key_id
    operator_key = _operator_key(control_plane, private_tmp)
    await _seed(admin, simulator)
    rotated = await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
    await admin.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=old_id))
    pin_envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    pin = private_tmp / "site.pin"
    pin.write_bytes(pin_envelope.SerializeToString())

    # The site's node was installed with the old key only (--trust-key) and no control plane.
    site = DataPlaneNode(
        NodeSettings(
            listen="127.0.0.1:0",
            snapshot_file=pin,
            trust_keys=(operator_key,),
            node_id="site-1",
            data_dir=Path(tempfile.mkdtemp(prefix="site-", dir=private_tmp)),
            drain_seconds=1.0,
        )
    )
    await site.start()
    try:
        assert site.store.version == snapshot_pb2.Snapshot.FromString(pin_envelope.payload).version
        assert set(site.store.trust.state.keys) == {rotated.key.key_id}
    finally:
        await site.stop()

    # A forged pin: signed by an intruder, with a chain whose statement the intruder signed.
    intruder = Ed25519PrivateKey.generate()
    forged = _resign(pin_envelope.payload, intruder)
    statement = snapshot_pb2.TrustStatement(
        trusted_keys=[
            snapshot_pb2.TrustedKey(
                key_id=key_id_for(intruder.public_key()),
                ed25519_public_key=intruder.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
                state=snapshot_pb2.TRUSTED_KEY_STATE_ACTIVE,
            )
        ]
    ).SerializeToString()
    fake = forged.trust_chain.add(payload_type=STATEMENT_PAYLOAD_TYPE, payload=statement)
    fake.signatures.add(
        key_id=key_id_for(intruder.public_key()), sig=intruder.sign(pae(STATEMENT_PAYLOAD_TYPE, statement))
    )
    forged_pin = private_tmp / "forged.pin"
    forged_pin.write_bytes(forged.SerializeToString())
    argv = ["dataplane", "verify", "--trust-key", str(operator_key), "--snapshot"]
    assert await asyncio.to_thread(main, [*argv, str(pin)]) == 0
    assert await asyncio.to_thread(main, [*argv, str(forged_pin)]) == 1
