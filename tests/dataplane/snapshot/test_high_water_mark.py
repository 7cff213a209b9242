"""The high-water mark is as hard to lose as the snapshot, and every file is private."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.errors import SnapshotFileInvalid
from dataplane.evidence.log import log_path
from dataplane.node_settings import NodeSettings
from dataplane.snapshot.lkg import HWM_FILE, LKG_FILE
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot


async def _refused(trust_key: Path, tmp_path: Path, **settings: Any) -> None:
    """Start a node that must refuse to start (``async with`` releases what it opened)."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "trust_keys": (trust_key,),
        "node_id": "node-test",
        "data_dir": tmp_path / "node",
        "scope": Scope(deployment="test"),
        **settings,
    }
    async with DataPlaneNode(NodeSettings(**values)):
        pytest.fail("the node started")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_missing_mark_next_to_a_last_known_good_refuses_start_unless_reset(
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    trust_key: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = await start_node()
    assert (await first.store.apply(envelope(snapshot(5, simulator.base_url), signing_key))).accepted
    await first.stop()
    snap_dir = tmp_path / "node" / "snapshot"
    (snap_dir / HWM_FILE).unlink()

    with pytest.raises(SnapshotFileInvalid, match=r"high-water mark missing next to lkg\.envelope") as err:
        await _refused(trust_key, tmp_path)
    assert "--reset-high-water-mark" in str(err.value)

    with caplog.at_level(logging.ERROR):
        node = await start_node(reset_high_water_mark=True)
    assert "HIGH-WATER MARK RESET" in caplog.text
    assert node.store.version == 5
    # The mark restarts from the last-known-good, on disk too: an older one is a rollback.
    assert (snap_dir / HWM_FILE).exists()
    result = await node.store.apply(envelope(snapshot(4, simulator.base_url), signing_key))
    assert not result.accepted
    assert "rollback" in result.reason


async def test_a_pin_older_than_the_mark_is_refused_and_a_newer_pin_raises_it(
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    trust_key: Path,
) -> None:
    node = await start_node()
    assert (await node.store.apply(envelope(snapshot(7, simulator.base_url), signing_key))).accepted
    await node.stop()

    old_pin = tmp_path / "v6.envelope"
    old_pin.write_bytes(envelope(snapshot(6, simulator.base_url), signing_key).SerializeToString())
    with pytest.raises(SnapshotFileInvalid, match="rollback: version 6 is below the applied version 7"):
        await _refused(trust_key, tmp_path, snapshot_file=old_pin)

    new_pin = tmp_path / "v9.envelope"
    new_pin.write_bytes(envelope(snapshot(9, simulator.base_url), signing_key).SerializeToString())
    pinned = await start_node(snapshot_file=new_pin)
    assert pinned.store.version == 9
    await pinned.stop()
    # The mark moved to 9 and was persisted: a v8 pin, above the old mark of 7, is refused now.
    v8_pin = tmp_path / "v8.envelope"
    v8_pin.write_bytes(envelope(snapshot(8, simulator.base_url), signing_key).SerializeToString())
    with pytest.raises(SnapshotFileInvalid, match="rollback: version 8 is below the applied version 9"):
        await _refused(trust_key, tmp_path, snapshot_file=v8_pin)
    # The pin was kept as last-known-good, so deleting the mark is noticed on a pinned node too.
    (tmp_path / "node" / "snapshot" / HWM_FILE).unlink()
    with pytest.raises(SnapshotFileInvalid, match="high-water mark missing"):
        await _refused(trust_key, tmp_path, snapshot_file=old_pin)


async def test_snapshot_mark_and_evidence_files_are_private(serving_node: Any, tmp_path: Path) -> None:
    async with grpc.aio.insecure_channel(serving_node.address) as channel:
        await infer_pb2_grpc.InferServiceStub(channel).Infer(chat("hi"), metadata=AUTH, timeout=10)
    snap_dir = tmp_path / "node" / "snapshot"
    evidence = log_path(tmp_path / "node", "node-test")
    assert _mode(snap_dir) == 0o700
    assert _mode(snap_dir / LKG_FILE) == 0o600
    assert _mode(snap_dir / HWM_FILE) == 0o600
    assert _mode(evidence.parent) == 0o700
    assert evidence.stat().st_size > 0
    assert _mode(evidence) == 0o600


def _in_group(version: int, base_url: str, group: str, variant: str = "") -> Any:
    snap = snapshot(version, base_url)
    snap.scope.node_group = group
    if variant:
        snap.tenants[0].labels["variant"] = variant
    return snap


async def test_versions_count_per_group_a_moved_node_starts_on_its_new_groups_chain(
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = await start_node(scope=Scope(deployment="test", node_group="old"))
    assert (await old.store.apply(envelope(_in_group(5, simulator.base_url, "old"), signing_key))).accepted
    await old.stop()
    mark = (tmp_path / "node" / "snapshot" / HWM_FILE).read_text()
    assert '"node_group": "old"' in mark

    # Moved (new certificate, new --node-group): the new group's chain is at v1, below the
    # mark's v5, and is not a rollback. Its protection starts there.
    caplog.set_level(logging.WARNING)
    moved = await start_node(scope=Scope(deployment="test", node_group="new"))
    assert (await moved.store.apply(envelope(_in_group(1, simulator.base_url, "new"), signing_key))).accepted
    assert "this node moved groups" in caplog.text
    assert '"node_group": "new"' in (tmp_path / "node" / "snapshot" / HWM_FILE).read_text()
    conflict = await moved.store.apply(
        envelope(_in_group(1, simulator.base_url, "new", "other"), signing_key)
    )
    assert not conflict.accepted
    assert conflict.reason.startswith("conflict:")
    # The old group's snapshots stay out: its scope is not this node's.
    replay = await moved.store.apply(envelope(_in_group(6, simulator.base_url, "old"), signing_key))
    assert not replay.accepted
    assert replay.reason.startswith("scope:")


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (b'{"version": Infinity, "sha256": "' + b"0" * 64 + b'"}', "version: must be a whole number"),
        (b'{"version": 1e400, "sha256": "' + b"0" * 64 + b'"}', "version: must be a whole number"),
        (b'{"version": 2.7, "sha256": "' + b"0" * 64 + b'"}', "version: must be a whole number"),
        (b'{"version": true, "sha256": "' + b"0" * 64 + b'"}', "version: must be a whole number"),
        (b'{"version": -5, "sha256": "' + b"0" * 64 + b'"}', "version: must be a whole number"),
        (b'{"version": 5, "sha256": ""}', "sha256: must be 64 hex digits"),
        (b'{"version": 5, "sha256": "' + b"0" * 64 + b'", "node_group": 7}', "node_group: must be a string"),
        (b"[" * 100_000, "not JSON"),
    ],
    ids=["infinity", "1e400", "fraction", "true", "negative", "no-hash", "group", "nested"],
)
async def test_an_edited_mark_refuses_start_naming_the_rule(
    trust_key: Path, tmp_path: Path, body: bytes, rule: str
) -> None:
    # Int() took 2.7 and true as versions, and Infinity or deep nesting raised OverflowError
    # or RecursionError (a traceback at start, not the refusal serve reports in one line).
    snap_dir = tmp_path / "node" / "snapshot"
    snap_dir.mkdir(parents=True, mode=0o700)
    (snap_dir / HWM_FILE).write_bytes(body)
    with pytest.raises(SnapshotFileInvalid, match=r"unreadable high-water mark") as err:
        await _refused(trust_key, tmp_path)
    assert rule in str(err.value)
