"""Policies inside a snapshot: the node's compiler reports a bad policy at its path
inside the snapshot, and a good one routes exactly as compiled."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dataplane.routing.planner import plan_route
from dataplane.routing.query import RouteQuery
from dataplane.routing.table import build_route_table
from dataplane.snapshot.compile import SnapshotInvalid, compile_snapshot
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2


def snapshot(document: dict[str, Any]) -> snapshot_pb2.Snapshot:
    snap = snapshot_pb2.Snapshot(version=4)
    snap.tenants.add(id="t1", name="Tenant One", tier="gold", active=True)
    snap.providers.add(id="p1", name="sim", type="openai_compatible", base_url="http://127.0.0.1:9/v1")
    for alias in ("sim-fast", "gpt-4o"):
        model = snap.models.add(id=f"m-{alias}", alias=alias, capabilities=[common_pb2.CAPABILITY_CHAT])
        model.deployments.add(id=f"d-{alias}", provider_id="p1", upstream_model=alias)
    snap.policies.add(id="pol-1", tenant_id="t1", version=2, document_json=json.dumps(document))
    return snap


def test_a_bad_weight_is_reported_at_its_path_in_the_snapshot() -> None:
    document = {
        "allowed_models": ["sim-fast", "gpt-4o"],
        "rules": [
            {"models": ["sim-fast"]},
            {"models": ["gpt-4o"]},
            {"strategy": "weighted", "weights": {"sim-fast": 1, "gpt-4o": -5}},
        ],
    }
    with pytest.raises(SnapshotInvalid) as caught:
        compile_snapshot(snapshot(document), b"\0" * 32)
    assert caught.value.path == "$.policies[0].document.rules[2].weights.gpt-4o"


def test_a_compiled_snapshot_routes_by_its_policy() -> None:
    document = {
        "default_model": "sim-fast",
        "allowed_models": ["sim-fast", "gpt-4o"],
        "rules": [{"match": {"tasks": ["review"]}, "models": ["gpt-4o"], "fallbacks": ["sim-fast"]}],
    }
    config = compile_snapshot(snapshot(document), b"\0" * 32)
    tenant = config.tenants["t1"]
    reviewed = plan_route(build_route_table(config), RouteQuery(tenant, task="review"))
    assert (reviewed.policy_id, reviewed.policy_version, reviewed.rule) == ("pol-1", 2, "rules[0]")
    assert [c.model.alias for c in reviewed.ordered] == ["gpt-4o", "sim-fast"]
    assert plan_route(build_route_table(config), RouteQuery(tenant)).chosen.model.alias == "sim-fast"
