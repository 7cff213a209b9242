"""Rollback end to end: the restored config reaches a real node as a new, higher version,
and the next request routes by it again."""

from __future__ import annotations

from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.e2e.test_config_push import TENANT, _converged, _infer, _seed


async def test_a_rollback_reaches_the_node_as_a_higher_version_with_the_old_config(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    api_key = await _seed(admin, simulator)
    node = await connected_node("edge-rb")
    good = await _converged(admin, "edge-rb")
    assert (await _infer(node, api_key)).model == "small"

    # A bad change: traffic moves to "large" and "small" disappears from the registry.
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: large"))
    await admin.DeleteModel(admin_pb2.DeleteModelRequest(model="small"))
    bad = await _converged(admin, "edge-rb")
    assert (await _infer(node, api_key)).model == "large"

    result = await admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=good))
    assert result.snapshot_version > bad
    assert list(result.keys_not_restored) == []
    applied = await _converged(admin, "edge-rb")
    assert applied == result.snapshot_version

    response = await _infer(node, api_key)
    assert response.model == "small"
    assert response.snapshot_version == result.snapshot_version
    assert simulator.stats("small-upstream").chat == 2

    # What the node now runs is the good version's config: only the policy's number moved on.
    diff = await admin.DiffSnapshots(
        admin_pb2.DiffSnapshotsRequest(from_version=good, to_version=result.snapshot_version)
    )
    assert [(c.kind, c.name, [f.field for f in c.fields], c.document_diff) for c in diff.changes] == [
        ("policy", TENANT, ["version"], "")
    ]
    newest = (await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(limit=1))).snapshots[0]
    assert (newest.version, newest.created_by, newest.reason) == (
        result.snapshot_version,
        "admin:tests",
        f"rollback to v{good}",
    )
