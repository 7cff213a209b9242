"""ExplainRoute is the node's own decision, in every deployment mode.

A corpus of generated requests (explicit and policy-chosen models, tasks and
metadata that pick rules, capabilities implied by content or required outright,
data classes that need certification, prompts that overflow context windows,
output limits a model cannot honour) is sent to a real node in each mode (cloud,
on-prem, air-gapped at a site) over one control plane. For each request the
node's evidence record and the control plane's ExplainRoute for the same node
context must name the same rule, candidates, order, drops, arm and shadow, or
refuse with the same status and message.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataplane.app import DataPlaneNode
from dataplane.config.model import DeploymentMode, Scope
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.node_settings import NodeSettings
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane

REQUESTS_PER_MODE = 210
TENANT = "acme"
VAULT = "vault"
C = common_pb2
CLOUD, ON_PREM, SITE = (
    snapshot_pb2.PROVIDER_LOCATION_PUBLIC_CLOUD,
    snapshot_pb2.PROVIDER_LOCATION_ON_PREM,
    snapshot_pb2.PROVIDER_LOCATION_SITE,
)

# name, location, site, region, jurisdiction
PROVIDERS = [
    ("cloud-us", CLOUD, "", "us-east-1", "US"),
    ("cloud-eu", CLOUD, "", "eu-west-1", "EU"),
    ("dc", ON_PREM, "", "eu-west-1", "EU"),
    ("site-a", SITE, "site-a", "eu-west-1", "EU"),
    ("site-b", SITE, "site-b", "eu-central-1", "EU"),
]

# alias, capabilities, context window, max output, input/output price per Mtok, certified for, deployments
MODELS: list[tuple[str, list[int], int, int, int, int, list[int], list[tuple[str, int]]]] = [
    ("m-fast", [C.CAPABILITY_CHAT], 400, 0, 100_000_000, 400_000_000, [], [("cloud-us", 3), ("cloud-eu", 1)]),
    (
        "m-tools",
        [C.CAPABILITY_CHAT, C.CAPABILITY_TOOLS, C.CAPABILITY_JSON_MODE],
        8000,
        0,
        500_000_000,
        1_500_000_000,
        [],
        [("cloud-eu", 1), ("site-a", 1)],
    ),
    (
        "m-vision",
        [C.CAPABILITY_CHAT, C.CAPABILITY_TOOLS, C.CAPABILITY_VISION],
        16000,
        0,
        2_500_000_000,
        10_000_000_000,
        [],
        [("cloud-us", 1)],
    ),
    (
        "m-local",
        [C.CAPABILITY_CHAT, C.CAPABILITY_TOOLS],
        4000,
        512,
        0,
        0,
        [C.DATA_CLASSIFICATION_RESTRICTED],
        [("dc", 1), ("site-a", 2), ("site-b", 1)],
    ),
    (
        "m-big",
        [C.CAPABILITY_CHAT, C.CAPABILITY_TOOLS, C.CAPABILITY_JSON_SCHEMA, C.CAPABILITY_JSON_MODE],
        128000,
        0,
        5_000_000_000,
        15_000_000_000,
        [C.DATA_CLASSIFICATION_CONFIDENTIAL],
        [("cloud-us", 1), ("dc", 1)],
    ),
    ("m-other", [C.CAPABILITY_CHAT], 8000, 0, 1, 1, [], [("cloud-us", 1)]),
]

POLICY = """
default_model: m-fast
allowed_models: [m-fast, m-tools, m-vision, m-local, m-big]
constraints: {certification_required_from: confidential}
rules:
  - name: eu-only
    match: {metadata: {region: eu}}
    models: [m-tools, m-local, m-big]
    constraints: {jurisdictions: [EU]}
  - name: cheap
    match: {tasks: [bulk]}
    strategy: cheapest
    models: [m-fast, m-tools, m-big, m-local]
    constraints: {max_cost_usd: 0.01}
  - name: canary
    match: {tasks: [chat]}
    strategy: weighted
    weights: {m-fast: 70, m-tools: 30}
    sticky_key: metadata.user
    fallbacks: [m-local]
    shadow: {model: m-big, share: 0.3}
  - name: with-tools
    match: {capabilities: [tools]}
    models: [m-tools, m-vision, m-local]
    fallbacks: [m-big]
  - name: egress
    match: {tasks: [egress]}
    models: [m-big, m-fast]
    constraints: {allow_egress: true}
"""

VAULT_POLICY = """
default_model: m-local
allowed_models: [m-tools, m-local]
constraints: {certification_required_from: confidential}
rules:
  - name: eu-only
    match: {metadata: {region: eu}}
    models: [m-tools, m-local]
    constraints: {jurisdictions: [EU]}
  - name: cheap
    match: {tasks: [bulk]}
    strategy: cheapest
    models: [m-tools, m-local]
    constraints: {max_cost_usd: 0.01}
  - name: canary
    match: {tasks: [chat]}
    strategy: weighted
    weights: {m-local: 70, m-tools: 30}
    sticky_key: metadata.user
  - name: with-tools
    match: {capabilities: [tools]}
    models: [m-tools, m-local]
"""


@dataclass(frozen=True)
class NodeCase:
    name: str
    mode: DeploymentMode
    proto_mode: int
    site: str
    group: str
    """The node group it is enrolled in: its certificate says the mode and site it runs as."""
    tenant: str = TENANT


NODES = [
    NodeCase("cloud", DeploymentMode.CLOUD, C.DEPLOYMENT_MODE_CLOUD, "", "default"),
    NodeCase("on-prem", DeploymentMode.ON_PREM, C.DEPLOYMENT_MODE_ON_PREM, "dc-1", "on-prem"),
    # An air-gapped group sees only its site's providers, so its tenant's policy names only
    # the models it can reach (a policy naming others would not compile for the group).
    NodeCase(
        "air-gapped", DeploymentMode.AIR_GAPPED, C.DEPLOYMENT_MODE_AIR_GAPPED, "site-a", "air-gapped", VAULT
    ),
]


async def _seed(admin: Admin, simulator: Simulator) -> dict[str, str]:
    """The fleet's tenants, providers and models; an API key per tenant."""
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT, tier="gold"))
    for name, location, site, region, jurisdiction in PROVIDERS:
        await admin.CreateProvider(
            admin_pb2.CreateProviderRequest(
                provider=admin_pb2.Provider(
                    name=name,
                    type="simulated",
                    base_url=f"{simulator.base_url}/v1",
                    timeout_ms=10_000,
                    location=location,
                    site=site,
                    region=region,
                    jurisdiction=jurisdiction,
                )
            )
        )
    for alias, caps, window, max_out, in_price, out_price, certified, deployments in MODELS:
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=alias,
                    capabilities=caps,
                    context_window=window,
                    max_output_tokens=max_out,
                    input_price_nanos_per_mtok=in_price,
                    output_price_nanos_per_mtok=out_price,
                    certified_for=certified,
                    deployments=[
                        admin_pb2.Deployment(provider=p, upstream_model=f"{alias}-{p}", weight=w)
                        for p, w in deployments
                    ],
                )
            )
        )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document=POLICY))
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=VAULT, document=VAULT_POLICY))
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="corpus"))
    vault_key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=VAULT, name="corpus"))
    return {TENANT: str(key.secret), VAULT: str(vault_key.secret)}


def generate(rng: random.Random, n: int, prefix: str) -> list[infer_pb2.InferRequest]:
    """Requests that exercise every part of a decision."""
    out = []
    for i in range(n):
        request = infer_pb2.InferRequest(correlation_id=f"{prefix}-{i}")
        words = rng.choice((1, 10, 300, 1200, 5000))
        request.messages.add(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text="word " * words)])
        roll = rng.random()
        if roll < 0.15:
            request.model = rng.choice(
                ("m-fast", "m-tools", "m-local", "m-big", "m-vision", "m-other", "nope")
            )
        request.task = rng.choice(("", "", "bulk", "chat", "egress", "other"))
        if rng.random() < 0.3:
            request.metadata["region"] = rng.choice(("eu", "us"))
        request.metadata["user"] = f"u{rng.randrange(50)}"
        request.data_classification = rng.choice(
            (
                C.DATA_CLASSIFICATION_UNSPECIFIED,
                C.DATA_CLASSIFICATION_PUBLIC,
                C.DATA_CLASSIFICATION_INTERNAL,
                C.DATA_CLASSIFICATION_CONFIDENTIAL,
                C.DATA_CLASSIFICATION_RESTRICTED,
            )
        )
        if rng.random() < 0.25:
            request.tools.add(name="lookup", parameters_json_schema='{"type": "object"}')
        if rng.random() < 0.1:
            request.response_format.type = rng.choice(
                (infer_pb2.ResponseFormat.TYPE_JSON_OBJECT, infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA)
            )
            if request.response_format.type == infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA:
                request.response_format.json_schema = '{"type": "object"}'
        if rng.random() < 0.1:
            request.required_capabilities.append(C.CAPABILITY_VISION)
        if rng.random() < 0.3:
            request.params.max_output_tokens = rng.choice((64, 600, 4000))
        out.append(request)
    return out


@pytest.fixture
async def nodes(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> AsyncIterator[dict[str, DataPlaneNode]]:
    started: dict[str, DataPlaneNode] = {}
    try:
        for case in NODES:
            if case.tenant != TENANT:  # its group sees only it
                await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=case.tenant, tier="gold"))
                await control_plane.ensure_group(case.group, case.mode.value, case.site, (case.tenant,))
            node = DataPlaneNode(
                NodeSettings(
                    listen="127.0.0.1:0",
                    **(await control_plane.node_link(case.group, case.mode.value, case.site)),
                    trust_keys=(control_plane.trust_key_path,),
                    node_id=f"corpus-{case.name}",
                    data_dir=Path(tempfile.mkdtemp(prefix=f"corpus-{case.name}-", dir=private_tmp)),
                    mode=case.mode,
                    scope=Scope(site=case.site, node_group="" if case.group == "default" else case.group),
                    drain_seconds=2.0,
                    sync_backoff_base=0.05,
                    sync_backoff_cap=0.5,
                )
            )
            await node.start()
            started[case.name] = node
        yield started
    finally:
        for node in started.values():
            await node.stop()


def _node_view(record: dict[str, Any]) -> dict[str, Any]:
    routing = record["routing"]
    return {
        "rule": routing["rule"],
        "candidates": list(routing["candidates"]),
        "order": list(routing["order"]),
        "dropped": [tuple(d) for d in routing["dropped"]],
        "arm": routing["arm"],
        "shadow": routing["shadow"] or "",
    }


def _explained_view(explained: admin_pb2.ExplainRouteResponse) -> dict[str, Any]:
    d = explained.decision
    return {
        "rule": d.rule,
        "candidates": list(d.candidates),
        "order": list(explained.plan),
        "dropped": [(x.model, x.reason) for x in d.dropped],
        "arm": explained.arm,
        "shadow": explained.shadow,
    }


async def _explain(
    admin: Admin, request: infer_pb2.InferRequest, case: NodeCase
) -> tuple[admin_pb2.ExplainRouteResponse | None, tuple[grpc.StatusCode, str] | None]:
    """ExplainRoute as ``case``'s node; the answer, or the refusal's (status, message)."""
    try:
        explained = await admin.ExplainRoute(
            admin_pb2.ExplainRouteRequest(
                tenant=case.tenant,
                request=request,
                mode=case.proto_mode,
                site=case.site,
                node_group=case.group,
            )
        )
    except grpc.aio.AioRpcError as exc:
        return None, (exc.code(), exc.details() or "")
    return explained, None


async def test_explain_route_names_what_the_node_decided_in_every_mode(
    admin: Admin, simulator: Simulator, nodes: dict[str, DataPlaneNode]
) -> None:
    api_keys = await _seed(admin, simulator)
    for case in NODES:
        latest = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group=case.group))
        await nodes[case.name].store.wait_for_version(latest.version, timeout=60)
    rng = random.Random(20261129)

    for case in NODES:
        node = nodes[case.name]
        auth = (("authorization", f"Bearer {api_keys[case.tenant]}"),)
        corpus = generate(rng, REQUESTS_PER_MODE, case.name)
        outcomes: dict[str, tuple[grpc.StatusCode, str]] = {}
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            for request in corpus:
                try:
                    await stub.Infer(request, metadata=auth, timeout=10)
                    outcomes[request.correlation_id] = (grpc.StatusCode.OK, "")
                except grpc.aio.AioRpcError as exc:
                    details = (exc.details() or "").removesuffix(
                        f" (correlation id {request.correlation_id})"
                    )
                    outcomes[request.correlation_id] = (exc.code(), details)

        records = {
            r["correlation_id"]: r
            for r in read_records(log_path(node.settings.data_dir, node.settings.node_id))
            if r["kind"] == "infer"
        }
        seen: Counter[str] = Counter()
        for request in corpus:
            cid = request.correlation_id
            code, details = outcomes[cid]
            explained, refusal = await _explain(admin, request, case)
            if refusal is not None:
                assert refusal == (code, details), f"{case.name} {cid}"
                seen["refused"] += 1
                continue
            assert explained is not None
            assert code is grpc.StatusCode.OK, f"{case.name} {cid}: node refused ({code}, {details})"
            node_view, explained_view = _node_view(records[cid]), _explained_view(explained)
            assert node_view == explained_view, f"{case.name} {cid}"
            assert records[cid]["routing"]["served_by"]["model"] == explained.decision.chosen_model
            seen["served"] += 1
            seen[f"rule:{node_view['rule']}"] += 1
            seen["with drops"] += bool(node_view["dropped"])
            seen["shadowed"] += bool(node_view["shadow"])
            seen["fallbacks"] += len(node_view["order"]) > 1

        # The corpus must reach the interesting paths, or the comparison proves little.
        assert seen["served"] >= 40, (case.name, seen)
        assert seen["refused"] >= 10, (case.name, seen)
        assert seen["with drops"] >= 10, (case.name, seen)
        assert seen["fallbacks"] >= 5, (case.name, seen)
        assert len([k for k in seen if k.startswith("rule:")]) >= 3, (case.name, seen)
