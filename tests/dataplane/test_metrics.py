"""A node's Prometheus endpoint: request metrics that count exactly what its evidence records
say, GenAI-convention names and labels, bounded label values (never API keys, correlation ids
or a caller's made-up model name), exemplars in OpenMetrics, and the node's state gauges."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import chain_files
from dataplane.pipeline.metrics import limit_label
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import AUTH, EXPIRED_KEY, NodeFactory, chat, envelope, snapshot


@pytest.fixture
async def metered(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    node = await start_node(metrics_listen="127.0.0.1:0")
    result = await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))
    assert result.accepted, result.reason
    return node


async def _scrape(node: DataPlaneNode, accept: str = "") -> tuple[str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://{node.metrics_address}/metrics", headers={"Accept": accept} if accept else {}
        ) as r,
    ):
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


def _samples(text: str, name: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def _served(record: dict[str, Any]) -> str:
    """The model that served a request, as its record says ("" when none did)."""
    served = (record.get("routing") or {}).get("served_by") or {}
    return str(served.get("model", ""))


async def _traffic(node: DataPlaneNode) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for i in range(3):
            await stub.Infer(chat(f"hello {i}", correlation_id=f"cid-{i}"), metadata=AUTH)
        await stub.Infer(chat("smart", model="sim-smart"), metadata=AUTH)
        async for _ in stub.InferStream(chat("stream me"), metadata=AUTH):
            pass
        await stub.Embed(infer_pb2.EmbedRequest(model="sim-embed", inputs=["x", "y"]), metadata=AUTH)
        for request, metadata in (
            (chat("who?"), (("authorization", "Bearer sk-nope-0000000000"),)),
            (chat("old"), (("authorization", f"Bearer {EXPIRED_KEY}"),)),
            (chat("made up", model="attacker-chosen-model-name"), AUTH),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Infer(request, metadata=metadata)


async def test_request_metrics_count_exactly_what_the_evidence_records_say(metered: DataPlaneNode) -> None:
    await _traffic(metered)
    records = [
        json.loads(line)
        for path in chain_files(metered.settings.data_dir)
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    expected = Counter((r["tenant_id"], _served(r), r["outcome"]["code"]) for r in records)
    content_type, text = await _scrape(metered)
    assert content_type.startswith("text/plain")
    counted: Counter[tuple[str, str, str]] = Counter()
    for sample in _samples(text, "signalbox_requests_total"):
        assert sample.labels["worker"] == "0"
        counted[(sample.labels["tenant"], sample.labels["model"], sample.labels["status"])] += int(
            sample.value
        )
    # Refused before routing: no model. Served: the model that served.
    assert {k: v for k, v in counted.items() if v} == dict(expected)
    assert sum(counted.values()) == len(records) == 9

    cost = sum(s.value for s in _samples(text, "signalbox_cost_usd_total"))
    assert cost == pytest.approx(sum(r["cost"]["total_nanos"] for r in records) / 1e9)
    tokens = {
        s.labels["gen_ai_token_type"]: s.value
        for s in _samples(text, "gen_ai_client_token_usage_sum")
        if s.labels["gen_ai_request_model"] == "sim-smart"
    }
    smart = [r for r in records if _served(r) == "sim-smart"]
    assert tokens == {
        "input": sum(r["usage"]["input_tokens"] for r in smart),
        "output": sum(r["usage"]["output_tokens"] for r in smart),
    }
    # Embeddings have no output tokens: that series never appears, even at zero.
    assert not [
        s
        for s in _samples(text, "gen_ai_client_token_usage_count")
        if s.labels["gen_ai_operation_name"] == "embeddings" and s.labels["gen_ai_token_type"] == "output"
    ]
    # Three chats of one kind (tenant, model, outcome) counted by one set of children.
    fast = [s.value for s in _samples(text, "signalbox_requests_total") if s.labels["model"] == "sim-fast"]
    assert sum(fast) >= 3
    durations = _samples(text, "gen_ai_server_request_duration_seconds_count")
    assert {s.labels["gen_ai_operation_name"] for s in durations} == {"chat", "embeddings"}
    assert {s.labels["gen_ai_provider_name"] for s in durations if s.labels["gen_ai_request_model"]} == {
        "simulated"
    }
    assert sum(s.value for s in durations) == 9
    assert sum(s.value for s in _samples(text, "gen_ai_server_time_to_first_token_seconds_count")) == 1
    assert sum(s.value for s in _samples(text, "signalbox_node_added_seconds_count")) == 9

    # Bounded labels: nothing a caller chose, no key ids, no correlation ids.
    for leaked in ("attacker-chosen-model-name", "k-acme", "k-expired", "cid-0", "sk-nope"):
        assert leaked not in text

    # State gauges, read at scrape time.
    assert _samples(text, "signalbox_snapshot_version")[0].value == 1
    assert _samples(text, "signalbox_snapshot_age_seconds")[0].value > 0
    assert _samples(text, "signalbox_evidence_spool_bytes")
    assert {s.labels["deployment"] for s in _samples(text, "signalbox_breaker_state")} >= {"d-sim-fast"}


async def test_openmetrics_carries_the_correlation_id_as_an_exemplar(metered: DataPlaneNode) -> None:
    await _traffic(metered)
    content_type, text = await _scrape(metered, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    exemplars = [
        s.exemplar.labels["correlation_id"]
        for family in openmetrics_families(text)
        if family.name == "gen_ai_server_request_duration_seconds"
        for s in family.samples
        if s.exemplar is not None
    ]
    # Each bucket keeps the last request that fell in it: every one is a request's own id.
    ids = {
        json.loads(line)["correlation_id"]
        for path in chain_files(metered.settings.data_dir)
        for line in path.read_text().splitlines()
        if line.strip()
    }
    assert exemplars
    assert set(exemplars) <= ids


async def test_metrics_are_off_unless_asked(start_node: NodeFactory) -> None:
    node = await start_node()
    with pytest.raises(RuntimeError, match="metrics are off"):
        _ = node.metrics_address


def test_a_limit_label_never_holds_the_key_id() -> None:
    assert limit_label("api key k-123 of tenant acme requests per minute") == "key requests per minute"
    assert limit_label("tenant acme budget per day") == "tenant budget per day"
    assert limit_label("tenant acme something new") == "tenant other"


async def test_governance_refusals_are_counted_by_the_rule_that_refused(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    from tests.dataplane.governance.test_node_governance import governed, rule

    profile = {
        "limits": {"max_messages": 2},
        "input": {"rules": [rule("no-codename", "terms", "block", options={"terms": ["falcon"]})]},
    }
    node = await start_node(metrics_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(governed(simulator.base_url, profile), signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        three = chat("one")
        for text in ("two", "three"):
            three.messages.add(role=infer_pb2.ROLE_USER).content.add(text=text)
        for request in (chat("about Falcon"), chat("falcon again"), three):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Infer(request, metadata=AUTH)
        await stub.Infer(chat("fine"), metadata=AUTH)
    _, text = await _scrape(node)
    counted = {s.labels["rule"]: s.value for s in _samples(text, "signalbox_governance_refusals_total")}
    assert counted == {"no-codename": 2, "limits.max_messages": 1}
