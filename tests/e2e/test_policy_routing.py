"""A policy applied through the Admin API, served by a connected node against the simulator.

- the node prepares every rule's routes when it applies the snapshot, before any request;
- a request that falls back from a failing deployment to a healthy one carries the whole
  decision, in its ``RoutingDecision`` and in its evidence record: the rule, the candidates
  considered, each dropped one with its reason, the deployment that served, and every attempt
  with its outcome.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc
import httpx

from dataplane.app import DataPlaneNode
from dataplane.config.model import DeploymentMode, Scope
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.node_settings import NodeSettings
from dataplane.routing.query import NodeContext
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

TENANT = "acme"
CHAT, TOOLS = common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_TOOLS

POLICY = """
default_model: steady
allowed_models: [flaky, basic, steady]
retry: {max_attempts: 3, attempts_per_deployment: 1, backoff_base_ms: 0, backoff_cap_ms: 0}
rules:
  - name: with-tools
    match: {capabilities: [tools]}
    models: [flaky, basic]
    fallbacks: [steady]
"""


async def _seed(admin: Admin, simulator: Simulator) -> str:
    """Tenant, a provider on the simulator, three models, the policy; returns an API key.

    ``basic`` lacks tools, so a request needing tools drops it; ``flaky`` is the one
    the tests make fail."""
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT, tier="gold"))
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(
                name="sim", type="simulated", base_url=f"{simulator.base_url}/v1", timeout_ms=10_000
            )
        )
    )
    models: Sequence[tuple[str, Sequence[int]]] = (
        ("flaky", (CHAT, TOOLS)),
        ("basic", (CHAT,)),
        ("steady", (CHAT, TOOLS)),
    )
    for alias, caps in models:
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=alias,
                    capabilities=caps,
                    deployments=[admin_pb2.Deployment(provider="sim", upstream_model=f"{alias}-upstream")],
                )
            )
        )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document=POLICY))
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="e2e"))
    return str(key.secret)


async def _converged(admin: Admin, node: DataPlaneNode) -> int:
    latest = await admin.latest_version()
    await node.store.wait_for_version(latest, timeout=15)
    return latest


async def test_routes_are_prepared_when_the_snapshot_is_applied(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    await _seed(admin, simulator)
    node = await connected_node("edge-prepared")
    await _converged(admin, node)
    state = node.store.require()
    config = state.config
    tenant_id, policy = next((t, p) for t, p in config.policies.items() if p.rules)
    # No request has been made: the routes were built by the store's apply, for this node.
    routes = state.routes.policies[tenant_id]
    assert routes.policy is policy
    assert [r.rule.name for r in (*routes.rules, routes.default)] == ["with-tools", "default"]
    for prepared in (*routes.rules, routes.default):
        assert len(prepared.rows.rows) == len(prepared.rule.candidates), prepared.rule.name
    assert state.routes.config is config
    assert state.routes.node.site == node.settings.scope.site
    assert simulator.stats_json()["total"] == 0


async def test_a_fallback_is_carried_by_the_response_and_the_evidence(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    api_key = await _seed(admin, simulator)
    node = await connected_node("edge-fallback")
    await _converged(admin, node)
    async with httpx.AsyncClient() as http:
        told = await http.post(
            f"{simulator.base_url}/_sim/behaviour", json={"model": "flaky-upstream", "fail_status": 500}
        )
        assert told.status_code == 200, told.text

    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        request = infer_pb2.InferRequest(
            required_capabilities=[TOOLS],
            correlation_id="cid-fallback",
            messages=[
                infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text="hi")])
            ],
        )
        response = await stub.Infer(request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=10)

    assert response.model == "steady"
    routing = response.routing
    assert routing.rule == "with-tools"
    assert routing.strategy == "priority"
    assert list(routing.candidates) == ["flaky", "basic", "steady"]
    assert [(d.model, d.reason) for d in routing.dropped] == [("basic", "lacks capability 'tools'")]
    assert (routing.chosen_model, routing.chosen_provider) == ("steady", "sim")
    assert routing.chosen_deployment
    assert [(a.model, a.outcome) for a in routing.attempts] == [("flaky", "server_error"), ("steady", "ok")]
    assert routing.attempts[0].error
    assert routing.attempts[1].deployment == routing.chosen_deployment
    assert simulator.stats("flaky-upstream").chat == 1
    assert simulator.stats("steady-upstream").chat == 1
    assert simulator.stats("basic-upstream").total == 0

    path = log_path(node.settings.data_dir, node.settings.node_id)

    def served() -> dict[str, object]:
        found = [r for r in read_records(path) if r["record_id"] == response.evidence_id]
        assert found, "evidence record not yet on disk"
        return found[0]

    record = await eventually(served, message="the evidence record of the request")
    assert record["correlation_id"] == "cid-fallback"
    assert isinstance(record["routing"], dict)
    evidence = record["routing"]
    assert evidence["rule"] == "with-tools"
    assert evidence["candidates"] == ["flaky", "basic", "steady"]
    assert evidence["dropped"] == [["basic", "lacks capability 'tools'"]]
    assert evidence["served_by"]["model"] == "steady"
    assert evidence["served_by"]["deployment"] == routing.chosen_deployment
    assert [(a["model"], a["outcome"], a["http_status"]) for a in evidence["attempts"]] == [
        ("flaky", "server_error", 500),
        ("steady", "ok", None),
    ]


async def test_an_on_prem_node_prepares_routes_for_its_own_mode_and_site(
    admin: Admin, simulator: Simulator, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    await _seed(admin, simulator)
    settings = NodeSettings(
        listen="127.0.0.1:0",
        **(await control_plane.node_link("on-prem", "on-prem")),
        trust_keys=(control_plane.trust_key_path,),
        node_id="edge-on-prem",
        data_dir=Path(tempfile.mkdtemp(prefix="edge-on-prem-", dir=private_tmp)),
        mode=DeploymentMode.ON_PREM,
        scope=Scope(node_group="on-prem"),
        drain_seconds=2.0,
    )
    async with DataPlaneNode(settings) as node:
        latest = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group="on-prem"))
        await node.store.wait_for_version(latest.version, timeout=15)
        state = node.store.require()
        tenant_id = next(t for t, p in state.config.policies.items() if p.rules)
        routes = state.routes.policies[tenant_id]
        assert [r.rule.name for r in routes.rules] == [r.name for r in routes.policy.rules]
        # Prepared for where the node runs, so the pipeline's plans use it.
        assert state.routes.node == NodeContext(mode=DeploymentMode.ON_PREM, site="", node_group="on-prem")
