"""What a node learns of deployments, models and tenants lasts as long as a snapshot has them:
a node applying snapshot after snapshot whose model and deployment ids rotate keeps one
breaker and one set of request series per model it still serves, not one per model it ever
served, and keeps what it learnt of those that remain."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from dataplane.app import DataPlaneNode
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import Dispatcher
from dataplane.routing.health import BreakerState
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.dataplane.routing.support import model, provider
from tests.dataplane.test_metrics import _scrape

VERSIONS = 6


def rotated(version: int, base_url: str) -> snapshot_pb2.Snapshot:
    """The conftest snapshot with its sim-fast model renamed ``rot-<version>``, deployed as
    ``d-rot-<version>``, and a governance profile blocking "falcon" by a rule named
    ``block-<version>``; sim-smart and the profile's rule "always" stay."""
    alias = f"rot-{version}"
    snap = snapshot(version, base_url, allowed=(alias, "sim-smart"), default_model=alias)
    (model,) = [m for m in snap.models if m.alias == "sim-fast"]
    model.alias = alias
    model.deployments[0].id = f"d-{alias}"
    rules = [
        {"name": name, "detector": "terms", "action": "block", "options": {"terms": [term]}}
        for name, term in ((f"block-{version}", "falcon"), ("always", "heron"))
    ]
    profile = {"input": {"rules": rules}}
    snap.governance_profiles.add(
        id="gp-acme", tenant_id="t-acme", version=version, document_json=json.dumps(profile)
    )
    return snap


def _labels(text: str, name: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_removed_deployments_and_models_leave_the_nodes_state_and_metrics(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node: DataPlaneNode = await start_node(metrics_listen="127.0.0.1:0")
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for version in range(1, VERSIONS + 1):
            result = await node.store.apply(envelope(rotated(version, simulator.base_url), signing_key))
            assert result.accepted, result.reason
            await stub.Infer(chat("hello", model=f"rot-{version}"), metadata=AUTH)
            async for _ in stub.InferStream(chat("stream me", model=f"rot-{version}"), metadata=AUTH):
                pass
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Infer(chat("falcon", model=f"rot-{version}"), metadata=AUTH)
            if version == 1:
                await stub.Infer(chat("smart", model="sim-smart"), metadata=AUTH)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Infer(chat("heron", model="sim-smart"), metadata=AUTH)
            _, text = await _scrape(node)
            # Only this version's deployment and the one that stayed.
            assert _labels(text, "signalbox_breaker_state", "deployment") == {
                f"d-rot-{version}",
                "d-sim-smart",
            }
            assert _labels(text, "signalbox_governance_refusals_total", "rule") == {
                f"block-{version}",
                "always",
            }
            # The refused request was never routed: its series name no model ("").
            for name, label, models in (
                ("signalbox_requests_total", "model", {"", "sim-smart"}),
                ("gen_ai_server_request_duration_seconds_count", "gen_ai_request_model", {"", "sim-smart"}),
                ("gen_ai_client_token_usage_count", "gen_ai_request_model", {"sim-smart"}),
                ("gen_ai_server_time_to_first_token_seconds_count", "gen_ai_request_model", set()),
                ("signalbox_cost_usd_total", "model", {"sim-smart"}),
            ):
                assert _labels(text, name, label) == {f"rot-{version}", *models}, name
    # What the node learnt of the model that stayed is kept: its one request still counts.
    smart = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "signalbox_requests_total" and s.labels["model"] == "sim-smart"
    ]
    assert smart == [1.0]


def test_a_request_still_running_on_a_removed_deployment_does_not_trouble_the_board() -> None:
    """Its breaker opening after the snapshot removed the deployment reported the key to a
    board that no longer has it: every later routing decision would fail on the lookup."""
    dispatcher = Dispatcher()
    m = model("x", ("x-1", "px"))
    state = dispatcher.state(Candidate(m, m.deployments[0], provider("px")))
    dispatcher.retain(set())
    assert dispatcher.health.all() == {}
    for _ in range(10):
        state.record_failure()
    assert state.current() is BreakerState.OPEN
    assert dispatcher.health.troubled() == {}
