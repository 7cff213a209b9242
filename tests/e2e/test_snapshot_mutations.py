"""The mutation corpus: every way a snapshot envelope can be wrong is refused by a real node
on the real sync stream, with a NACK reason specific to the fault, shown by `node list`;
the node keeps serving its last-known-good throughout."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.snapshot import store as store_module
from dataplane.snapshot.envelope import key_id_for
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.e2e.test_config_push import _converged, _infer, _resign, _seed
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

NODE = "mutant-1"


@dataclass(frozen=True, slots=True)
class Mutation:
    name: str
    envelope: snapshot_pb2.SignedEnvelope
    version: int
    """The version the node reports in its NACK (0: the payload does not decode)."""
    reason: Callable[[str], bool]


def _payload(base: bytes, change: Callable[[snapshot_pb2.Snapshot], None]) -> bytes:
    snapshot = snapshot_pb2.Snapshot.FromString(base)
    change(snapshot)
    return snapshot.SerializeToString(deterministic=True)


def _version(v: int) -> Callable[[snapshot_pb2.Snapshot], None]:
    def change(s: snapshot_pb2.Snapshot) -> None:
        s.version = v

    return change


def _corpus(current: bytes, good: int, signer: Ed25519PrivateKey) -> list[Mutation]:
    def signed(change: Callable[[snapshot_pb2.Snapshot], None]) -> snapshot_pb2.SignedEnvelope:
        return _resign(_payload(current, change), signer)

    flipped = signed(_version(good + 1))
    middle = len(flipped.payload) // 2
    flipped.payload = (
        flipped.payload[:middle] + bytes([flipped.payload[middle] ^ 0x01]) + flipped.payload[middle + 1 :]
    )

    stripped = signed(_version(good + 2))
    del stripped.signatures[:]

    def wrong_scope(s: snapshot_pb2.Snapshot) -> None:
        s.version = good + 4
        s.scope.node_group = "some-other-group"

    def expired(s: snapshot_pb2.Snapshot) -> None:
        s.version = good + 5
        s.created_at.FromSeconds(1_000_000)
        s.expires_at.FromSeconds(1_000_060)

    def dangling_key(s: snapshot_pb2.Snapshot) -> None:
        s.version = good + 6
        s.api_keys[0].tenant_id = "00000000-0000-0000-0000-00000000dead"

    def same_version_other_content(s: snapshot_pb2.Snapshot) -> None:
        s.tenants[0].labels["mutated"] = "yes"

    intruder = Ed25519PrivateKey.generate()

    def names_intruder(s: snapshot_pb2.Snapshot) -> None:
        s.version = good + 8
        s.trusted_keys.add(
            key_id=key_id_for(intruder.public_key()),
            ed25519_public_key=intruder.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            state=snapshot_pb2.TRUSTED_KEY_STATE_ACTIVE,
        )

    return [
        Mutation("flipped payload byte", flipped, -1, lambda r: r.startswith("signature:") and "fail" in r),
        Mutation("stripped signature", stripped, good + 2, lambda r: "unsigned" in r),
        Mutation(
            "unknown signing key",
            _resign(_payload(current, _version(good + 3)), Ed25519PrivateKey.generate()),
            good + 3,
            lambda r: "no signature by a trusted key" in r,
        ),
        Mutation("wrong group scope", signed(wrong_scope), good + 4, lambda r: r.startswith("scope:")),
        Mutation("expired", signed(expired), good + 5, lambda r: r.startswith("expired:")),
        Mutation(
            "inconsistent references",
            signed(dangling_key),
            good + 6,
            lambda r: "invalid payload" in r and "api_keys[0].tenant_id" in r and "unknown tenant" in r,
        ),
        Mutation(
            "malformed payload",
            _resign(b"\xff\xff\xff\xff not a snapshot", signer),
            0,
            lambda r: "invalid payload" in r and "not a Snapshot" in r,
        ),
        Mutation("lower version", signed(_version(good - 1)), good - 1, lambda r: r.startswith("rollback:")),
        Mutation(
            "same version, another hash",
            signed(same_version_other_content),
            good,
            lambda r: r.startswith("conflict:"),
        ),
        Mutation(
            "rotation statement signed by an untrusted key",
            _resign(_payload(current, names_intruder), intruder),
            good + 8,
            lambda r: "no signature by a trusted key" in r,
        ),
    ]


async def _nacked(admin: Admin, envelope: snapshot_pb2.SignedEnvelope, version: int) -> admin_pb2.Node:
    digest = hashlib.sha256(envelope.payload).digest()

    async def seen() -> admin_pb2.Node:
        (node,) = [
            n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes if n.node_id == NODE
        ]
        assert node.last_nack_version == version
        assert node.last_nack_reason
        return node

    node = await eventually(seen, message=f"NACK of v{version} ({digest.hex()[:12]})")
    return node


async def test_every_mutation_is_refused_with_its_own_reason_and_the_node_keeps_serving(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, connected_node: NodeFactory
) -> None:
    assert control_plane.cp.signer is not None
    assert control_plane.cp.sync is not None
    api_key = await _seed(admin, simulator)
    node = await connected_node(NODE)
    good = await _converged(admin, NODE)
    current = (await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())).payload
    digest = hashlib.sha256(current).digest()
    old_signer = control_plane.cp.signer.private_key

    reasons: dict[str, str] = {}
    for mutation in _corpus(current, good, old_signer):
        assert control_plane.cp.sync.inject(mutation.envelope, NODE) == 1, mutation.name
        # A flipped byte: the node reports the version the (corrupt) payload decodes to.
        version = mutation.version if mutation.version >= 0 else good + 1
        status = await _nacked(admin, mutation.envelope, version)
        assert mutation.reason(status.last_nack_reason), f"{mutation.name}: {status.last_nack_reason}"
        reasons[mutation.name] = status.last_nack_reason
        assert status.applied_version == good, mutation.name
        assert node.store.version == good, mutation.name
        assert node.store.payload_sha256 == digest, mutation.name
        assert (await _infer(node, api_key)).snapshot_version == good, mutation.name

    # Only the revoked key's signature: rotate, revoke the old key, then forge with it.
    # Back to back: the node may never see the dual-signed snapshot; the trust chain every
    # snapshot carries still leads it from the old key to the new one.
    await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
    revoked = await admin.RevokeSigningKey(
        admin_pb2.RevokeSigningKeyRequest(key_id=control_plane.cp.signer.key_id)
    )
    after_revoke = await _converged(admin, NODE)
    assert after_revoke >= revoked.snapshot_version
    latest = (await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())).payload
    forged = _resign(_payload(latest, _version(after_revoke + 1)), old_signer)
    assert control_plane.cp.sync.inject(forged, NODE) == 1
    status = await _nacked(admin, forged, after_revoke + 1)
    assert f"signed only by revoked key {control_plane.cp.signer.key_id}" in status.last_nack_reason
    reasons["only the revoked key's signature"] = status.last_nack_reason
    assert node.store.version == after_revoke
    assert (await _infer(node, api_key)).snapshot_version == after_revoke

    # Eleven faults, and no two of them explained alike except the two "untrusted signer" cases.
    assert len(reasons) == 11
    distinct = set(reasons.values())
    assert len(distinct) >= 10, reasons


async def test_a_snapshot_the_node_fails_to_apply_for_an_unexpected_reason_is_nacked_not_lost(
    admin: Admin,
    control_plane: RunningControlPlane,
    simulator: Simulator,
    connected_node: NodeFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: building the route table raises (a bug, memory). The node NACKs with
    a reason `node list` shows, keeps serving and keeps its stream; the next change applies."""
    api_key = await _seed(admin, simulator)
    node = await connected_node(NODE)
    good = await _converged(admin, NODE)
    real = store_module.build_route_table

    def broken(*args: object, **kwargs: object) -> object:
        raise MemoryError

    monkeypatch.setattr(store_module, "build_route_table", broken)
    # A registry change (a tenant or key change reuses the routes it has).
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: large"))
    refused = await admin.latest_version()

    async def nacked() -> admin_pb2.Node:
        (listed,) = [
            n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes if n.node_id == NODE
        ]
        assert listed.last_nack_version == refused
        return listed

    listed = await eventually(nacked, message="the NACK of the snapshot that failed to apply")
    assert listed.last_nack_reason == "internal error while applying: MemoryError (see the node's log)"
    assert listed.connected
    assert node.store.version == good
    assert (await _infer(node, api_key)).snapshot_version == good

    monkeypatch.setattr(store_module, "build_route_table", real)
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="third"))
    assert await _converged(admin, NODE) == refused + 1
