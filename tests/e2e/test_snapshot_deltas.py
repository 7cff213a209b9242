"""Deltas on the real sync stream: a node running the previous version gets a change as a
delta, rebuilds the full payload and verifies it exactly as one sent whole; a delta that
does not rebuild gets the snapshot whole; a rebuilt payload that is not what was signed is
refused like any bad envelope."""

from __future__ import annotations

import hashlib
import hmac
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.snapshot.compile import compile_payload
from dataplane.snapshot.delta import Splice, delta_message
from dataplane.snapshot.envelope import verify
from dataplane.snapshot.layout import API_KEYS, scan
from dataplane.snapshot.lkg import LKG_FILE, SNAPSHOT_DIR
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.e2e.test_config_push import _converged, _infer, _resign, _seed
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

NODE = "delta-1"


async def _newest(admin: Admin) -> bytes:
    return bytes((await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())).payload)


async def test_changes_reach_a_node_as_deltas_that_verify_as_whole_snapshots(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    api_key = await _seed(admin, simulator)
    node = await connected_node(NODE)
    await _converged(admin, NODE)
    taken = node.store.deltas_applied

    # Three kinds of change: a tenant's labels, a new key, the registry (a policy).
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", labels={"team": "blue"}))
    await _converged(admin, NODE)
    second = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="second"))
    await _converged(admin, NODE)
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: large"))
    version = await _converged(admin, NODE)

    assert node.store.deltas_applied == taken + 3
    payload = await _newest(admin)
    assert node.store.version == version
    assert node.store.payload_sha256 == hashlib.sha256(payload).digest()
    # What the node compiled by difference is what the whole payload compiles to.
    config = node.store.require().config
    assert config == compile_payload(payload)
    # Keyed by the HMAC under the hash key the control plane sent on the stream.
    entry = config.api_keys[hmac.digest(config.api_key_hash_keys[-1], second.secret.encode(), "sha256")]
    assert config.tenants[entry.tenant_id].labels == {"team": "blue"}
    # The last-known-good written from the rebuilt payload is the exact signed envelope.
    on_disk = snapshot_pb2.SignedEnvelope.FromString(
        (node.settings.data_dir / SNAPSHOT_DIR / LKG_FILE).read_bytes()
    )
    assert on_disk.payload == payload
    verify(on_disk, node.store.trust.state.keys)
    assert (await _infer(node, api_key)).model == "large"
    assert (await _infer(node, str(second.secret))).snapshot_version == version


async def test_a_delta_the_node_cannot_rebuild_gets_the_snapshot_whole_and_no_nack(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, connected_node: NodeFactory
) -> None:
    assert control_plane.cp.sync is not None
    await _seed(admin, simulator)
    node = await connected_node(NODE)
    good = await _converged(admin, NODE)
    current = await _newest(admin)
    digest = hashlib.sha256(current).digest()
    layout = scan(current)
    header = snapshot_pb2.Snapshot.FromString(layout.header)
    header.version = good + 1
    newer = type(layout)(header.SerializeToString(deterministic=True), layout.records)

    # Another base; a splice past the end; bytes that are not the ones the hash names.
    signed = snapshot_pb2.SignedEnvelope()
    wrong_base = delta_message(
        (good - 1, digest), newer, [], hashlib.sha256(newer.payload()).digest(), signed
    )
    too_far = delta_message(
        (good, digest), newer, [Splice(API_KEYS, 5_000, 1)], hashlib.sha256(newer.payload()).digest(), signed
    )
    wrong_hash = delta_message((good, digest), newer, [], b"\0" * 32, signed)
    for delta in (wrong_base, too_far, wrong_hash):
        assert control_plane.cp.sync.inject(delta, NODE) == 1

    # None of them is a verdict on a snapshot: no NACK, the node serves what it had ...
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", labels={"after": "resync"}))
    version = await _converged(admin, NODE)
    nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
    (status,) = [n for n in nodes if n.node_id == NODE]
    assert status.last_nack_version == 0
    assert status.last_nack_reason == ""
    # ... and the next change still arrives and verifies.
    assert node.store.version == version
    assert node.store.payload_sha256 == hashlib.sha256(await _newest(admin)).digest()


async def test_a_rebuilt_payload_that_was_not_signed_is_refused_like_a_whole_one(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, connected_node: NodeFactory
) -> None:
    assert control_plane.cp.sync is not None
    assert control_plane.cp.signer is not None
    await _seed(admin, simulator)
    node = await connected_node(NODE)
    good = await _converged(admin, NODE)
    current = await _newest(admin)
    digest = hashlib.sha256(current).digest()
    layout = scan(current)
    header = snapshot_pb2.Snapshot.FromString(layout.header)
    header.version = good + 1
    dropped_key = type(layout)(header.SerializeToString(deterministic=True), dict(layout.records))
    records = dict(dropped_key.records)
    records[API_KEYS] = list(records[API_KEYS])[1:]
    dropped_key = type(layout)(dropped_key.header, records)
    rebuilt = dropped_key.payload()
    splices = [Splice(API_KEYS, 0, 1)]

    # Signed by a key the node does not trust; then the signature of the real key over
    # other bytes (the current payload) carried with the rebuilt one.
    stranger = _resign(rebuilt, Ed25519PrivateKey.generate())
    real_over_other = _resign(current, control_plane.cp.signer.private_key)
    reasons = {}
    for name, envelope in (("stranger", stranger), ("other bytes", real_over_other)):
        delta = delta_message(
            (good, digest), dropped_key, splices, hashlib.sha256(rebuilt).digest(), envelope
        )
        assert control_plane.cp.sync.inject(delta, NODE) == 1

        async def nacked() -> str:
            nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
            (status,) = [n for n in nodes if n.node_id == NODE]
            assert status.last_nack_version == good + 1
            assert status.last_nack_reason.startswith("signature:")
            assert status.last_nack_reason not in reasons.values()
            return str(status.last_nack_reason)

        reasons[name] = await eventually(nacked, message=f"NACK of the {name} delta")
        assert node.store.version == good
        assert node.store.payload_sha256 == digest
    assert "no signature by a trusted key" in reasons["stranger"]
    assert "verification failed" in reasons["other bytes"]


async def test_a_change_to_most_of_the_config_goes_whole_not_as_a_delta(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    await _seed(admin, simulator)
    node = await connected_node(NODE)
    await _converged(admin, NODE)
    taken = node.store.deltas_applied
    lines = [
        json.dumps({"kind": "tenant", "name": f"bulk-{i:03d}", "labels": {"n": "x" * 50}}) for i in range(60)
    ]
    await admin.ImportConfig(admin_pb2.ImportConfigRequest(jsonl="\n".join(lines).encode()))
    version = await _converged(admin, NODE)
    assert node.store.version == version
    assert node.store.deltas_applied == taken  # the delta was larger than half the envelope
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="bulk-007", labels={"n": "y"}))
    await _converged(admin, NODE)
    assert node.store.deltas_applied == taken + 1  # and the next small change is a delta again
