"""Snapshot rules on a running node: only valid, newer, own-scope snapshots apply;
anything else is refused with a reason while the last-known-good keeps serving."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.errors import SnapshotFileInvalid
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.tls import ClientTls
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.fixtures.keys import sign_payload


async def _answer_model(node: DataPlaneNode, model: str = "") -> tuple[str, int]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        response = await stub.Infer(chat("hi", model=model), metadata=AUTH, timeout=10)
    return response.model, response.snapshot_version


async def _status(node: DataPlaneNode) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        try:
            await stub.Infer(chat("hi"), metadata=AUTH, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _tampered(env: snapshot_pb2.SignedEnvelope) -> snapshot_pb2.SignedEnvelope:
    snap = snapshot_pb2.Snapshot.FromString(env.payload)
    snap.tenants[0].name = "mallory"
    env.payload = snap.SerializeToString()
    return env


def _twin_provider(snap: snapshot_pb2.Snapshot) -> snapshot_pb2.Snapshot:
    twin = snap.providers.add()
    twin.CopyFrom(snap.providers[0])
    twin.base_url = "http://127.0.0.1:1/v1"  # the last one silently won: models called it
    return snap


def _deep_policy(snap: snapshot_pb2.Snapshot) -> snapshot_pb2.Snapshot:
    snap.policies[0].document_json = '{"rules":' * 100_000
    return snap


def _versioned(snap: snapshot_pb2.Snapshot, version: int) -> snapshot_pb2.Snapshot:
    snap.version = version
    return snap


BadEnvelope = Callable[[str, Ed25519PrivateKey], snapshot_pb2.SignedEnvelope]

BAD: dict[str, tuple[BadEnvelope, str]] = {
    "tampered": (
        lambda url, key: _tampered(envelope(snapshot(2, url), key)),
        "signature verification failed",
    ),
    "unsigned": (lambda url, key: envelope(snapshot(2, url)), "unsigned"),
    "unknown key": (
        lambda url, key: envelope(snapshot(2, url), Ed25519PrivateKey.generate()),
        "no signature by a trusted key",
    ),
    "wrong scope": (lambda url, key: envelope(snapshot(2, url, deployment="other"), key), "scope:"),
    "version zero": (lambda url, key: envelope(snapshot(0, url), key), "$.version: must be positive"),
    # Taken, it would raise the mark past any version the control plane can publish (a
    # bigint): every later snapshot a "rollback", and every Hello of this node refused.
    "version past int64": (
        lambda url, key: envelope(_versioned(snapshot(2, url), 2**63), key),
        f"$.version: at most {2**63 - 1} (got {2**63})",
    ),
    "same version, other hash": (
        lambda url, key: envelope(snapshot(1, url, default_model="sim-smart"), key),
        "conflict: version 1 was already applied",
    ),
    "uncompilable": (
        lambda url, key: envelope(snapshot(2, url, provider_type="no-such-adapter"), key),
        "providers[0].type",
    ),
    "duplicate provider": (
        lambda url, key: envelope(_twin_provider(snapshot(2, url)), key),
        "$.providers[1].id: duplicate provider",
    ),
    # Was "internal error while applying: RecursionError".
    "policy nested too deep": (
        lambda url, key: envelope(_deep_policy(snapshot(2, url)), key),
        "$.policies[0].document_json: not JSON: nested too deep",
    ),
    "expired": (lambda url, key: envelope(snapshot(2, url, expires_at=time.time() - 60), key), "expired"),
    "not a snapshot": (lambda url, key: sign_payload(b"\xff\xff\xff", key), "payload is not a Snapshot"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_snapshot_is_refused_and_last_known_good_keeps_serving(
    case: str, serving_node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    make, reason = BAD[case]
    result = await serving_node.store.apply(make(simulator.base_url, signing_key))
    assert not result.accepted
    assert reason in result.reason
    assert serving_node.store.last_rejection == result.reason
    assert serving_node.store.version == 1
    assert await _answer_model(serving_node) == ("sim-fast", 1)


async def test_lower_version_after_a_newer_one_is_a_rollback(
    serving_node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    assert (await serving_node.store.apply(envelope(snapshot(3, simulator.base_url), signing_key))).accepted
    result = await serving_node.store.apply(envelope(snapshot(2, simulator.base_url), signing_key))
    assert not result.accepted
    assert result.reason.startswith("rollback: version 2 is below the applied version 3")
    assert serving_node.store.version == 3


async def test_same_version_same_hash_is_an_idempotent_ack(
    serving_node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    before = serving_node.store.current
    result = await serving_node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))
    assert result.accepted
    assert not result.changed
    assert serving_node.store.current is before


async def test_newer_snapshot_changes_routing_for_the_next_request(
    serving_node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    new = envelope(snapshot(2, simulator.base_url, default_model="sim-smart"), signing_key)
    assert (await serving_node.store.apply(new)).accepted
    assert await _answer_model(serving_node) == ("sim-smart", 2)


async def test_expired_snapshot_applies_when_the_site_allows_it(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node(allow_expired=True)
    old = envelope(snapshot(1, simulator.base_url, expires_at=time.time() - 3600), signing_key)
    assert (await node.store.apply(old)).accepted
    assert await _answer_model(node) == ("sim-fast", 1)


async def test_restart_serves_last_known_good_without_a_control_plane(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    first = await start_node()
    assert (await first.store.apply(envelope(snapshot(4, simulator.base_url), signing_key))).accepted
    await first.stop()
    # Nothing listens there (plaintext: no certificate to enroll for).
    second = await start_node(control_plane="127.0.0.1:1", control_plane_tls=ClientTls(insecure=True))
    assert second.store.version == 4
    assert await _answer_model(second) == ("sim-fast", 4)
    # The high-water mark survived the restart: an older snapshot is a rollback.
    result = await second.store.apply(envelope(snapshot(3, simulator.base_url), signing_key))
    assert not result.accepted
    assert "rollback" in result.reason


@pytest.mark.parametrize("damage", ["garbage", "flipped byte", "other key", "older version"])
async def test_corrupt_last_known_good_fails_closed(
    damage: str, start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    first = await start_node()
    older = envelope(snapshot(1, simulator.base_url), signing_key)
    assert (await first.store.apply(older)).accepted
    assert (await first.store.apply(envelope(snapshot(2, simulator.base_url), signing_key))).accepted
    await first.stop()
    lkg = tmp_path / "node" / "snapshot" / "lkg.envelope"
    if damage == "garbage":
        lkg.write_bytes(b"\xff\x00not an envelope")
    elif damage == "flipped byte":
        raw = bytearray(lkg.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        lkg.write_bytes(bytes(raw))
    elif damage == "other key":
        stranger = Ed25519PrivateKey.generate()
        lkg.write_bytes(envelope(snapshot(2, simulator.base_url), stranger).SerializeToString())
    else:
        # Validly signed, but below the persisted high-water mark: a rollback on disk.
        lkg.write_bytes(older.SerializeToString())
    second = await start_node()
    assert second.store.current is None
    assert await _status(second) is grpc.StatusCode.UNAVAILABLE
    # A valid snapshot from the control plane brings it back.
    assert (await second.store.apply(envelope(snapshot(3, simulator.base_url), signing_key))).accepted
    assert await _answer_model(second) == ("sim-fast", 3)


async def test_pinned_snapshot_file_serves_without_control_plane(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(envelope(snapshot(7, simulator.base_url), signing_key).SerializeToString())
    node = await start_node(snapshot_file=pin)
    assert await _answer_model(node) == ("sim-fast", 7)
    assert node.sync is None


async def test_pinned_snapshot_that_does_not_verify_refuses_to_start(
    simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path, trust_key: Path
) -> None:
    from dataplane.node_settings import NodeSettings

    pin = tmp_path / "site.snapshot"
    pin.write_bytes(
        envelope(snapshot(7, simulator.base_url), Ed25519PrivateKey.generate()).SerializeToString()
    )
    settings = NodeSettings(
        listen="127.0.0.1:0",
        trust_keys=(trust_key,),
        data_dir=tmp_path / "node",
        snapshot_file=pin,
        scope=Scope(deployment="test"),
    )
    with pytest.raises(SnapshotFileInvalid, match="no signature by a trusted key"):
        async with DataPlaneNode(settings):
            pass


async def test_provider_with_missing_credential_is_unusable_not_fatal(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node()
    snap = snapshot(1, simulator.base_url, credential_env="SIGNALBOX_CRED_TEST_THAT_IS_NOT_SET")
    result = await node.store.apply(envelope(snap, signing_key))
    assert result.accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(chat("hi"), metadata=AUTH, timeout=10)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    # The caller learns nothing of the node: the reference is for the operator's log.
    assert "SIGNALBOX_CRED_TEST_THAT_IS_NOT_SET" not in (info.value.details() or "")
    assert "provider credentials unavailable" in (info.value.details() or "")
    assert "not set or empty" in node.store.require().unusable["p-sim"]
