"""What governance costs: an answer the provider gave and governance then refused (an output
block, a broken JSON schema contract, retried or not) was paid for. Its cost is in the
request's evidence and settles against the tenant's budget, whether the request is served by
another candidate or refused; otherwise every refused answer would be spent off the books."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.accounting import cost_of
from dataplane.chat import Usage
from dataplane.quota import Kind
from signalbox.api.config.v1 import snapshot_pb2
from tests.dataplane.conftest import AUTH, NodeFactory, chat
from tests.dataplane.governance.test_node_governance import (
    RETRY_TWICE,
    Scripted,
    asks_for_age,
    governed,
    one_record,
    refusal,
    rule,
    scripted,  # noqa: F401  (a fixture)
    serving,
    stub_for,  # noqa: F401  (a fixture)
    upstream_at,
)
from tests.helpers import eventually

BUDGET = 10**9
"""Nano-USD a day: plenty; what matters is what is counted against it."""
SCRIPTED_USAGE = Usage(input_tokens=5, output_tokens=5)
"""What the scripted upstream reports for every whole answer."""


def _budgeted(snap: snapshot_pb2.Snapshot) -> snapshot_pb2.Snapshot:
    next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
        snapshot_pb2.Limits(budget_day_nanos=BUDGET)
    )
    return snap


def _nanos(node: Any, alias: str) -> int:
    model = next(m for m in node.store.current.config.models.values() if m.alias == alias)
    return cost_of(model, SCRIPTED_USAGE).total_nanos


async def _settled(node: Any, nanos: int) -> None:
    """The budget counts ``nanos`` spent: what the node's ledger granted less what the node
    still holds (once no lease is under way)."""

    def spent() -> int:
        bucket = node.quotas.buckets[("t-acme", "", Kind.BUDGET_DAY)]
        return int(node.ledger.spent("t-acme", "", Kind.BUDGET_DAY) - bucket.holding)

    await eventually(lambda: spent() == nanos, timeout=3, message=f"{nanos} nano-USD spent")


async def test_an_answer_refused_by_an_output_block_is_still_counted(
    start_node: NodeFactory,
    scripted: Scripted,  # noqa: F811
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,  # noqa: F811
) -> None:
    scripted.answers = {"sim-fast": "The codename is falcon."}
    profile = {"output": {"rules": [rule("no-codename", "terms", "block", options={"terms": ["falcon"]})]}}
    node = await serving(start_node, _budgeted(governed(scripted.base_url, profile)), signing_key, tmp_path)
    refused = await refusal(stub_for(node), chat("codename?", correlation_id="out-block"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert scripted.calls == {"sim-fast": 1}
    record = one_record(node, "out-block")
    assert record["cost"]["total_nanos"] == _nanos(node, "sim-fast") > 0, record["cost"]
    assert record["usage"]["input_tokens"] == 5
    assert record["usage"]["output_tokens"] == 5
    await _settled(node, _nanos(node, "sim-fast"))


async def test_answers_a_retry_contract_discarded_are_counted_with_the_one_served(
    start_node: NodeFactory,
    scripted: Scripted,  # noqa: F811
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,  # noqa: F811
) -> None:
    scripted.answers = {"sim-fast": '{"age": "forty-two"}', "sim-smart": '{"age": 42}'}
    profile = {"output": {"contract": {"on_failure": "retry"}}}
    snap = _budgeted(governed(scripted.base_url, profile, policy=RETRY_TWICE))
    node = await serving(start_node, snap, signing_key, tmp_path)
    response = await stub_for(node).Infer(asks_for_age("retried"), metadata=AUTH, timeout=10)
    assert scripted.calls == {"sim-fast": 1, "sim-smart": 1}
    both = _nanos(node, "sim-fast") + _nanos(node, "sim-smart")
    assert response.cost.total_nanos == both
    record = one_record(node, "retried")
    assert record["cost"]["total_nanos"] == both, record["cost"]
    assert record["usage"]["input_tokens"] == 10
    await _settled(node, both)


async def test_answers_a_retry_contract_discarded_are_counted_when_none_is_served(
    start_node: NodeFactory,
    scripted: Scripted,  # noqa: F811
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,  # noqa: F811
) -> None:
    scripted.answers = {"sim-fast": '{"age": "forty-two"}', "sim-smart": '{"age": "old"}'}
    profile = {"output": {"contract": {"on_failure": "retry"}}}
    snap = _budgeted(governed(scripted.base_url, profile, policy=RETRY_TWICE))
    node = await serving(start_node, snap, signing_key, tmp_path)
    refused = await refusal(stub_for(node), asks_for_age("never-met"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert scripted.calls == {"sim-fast": 1, "sim-smart": 1}
    record = one_record(node, "never-met")
    assert record["cost"]["total_nanos"] == _nanos(node, "sim-fast") + _nanos(node, "sim-smart")


async def test_a_streamed_answer_a_retry_contract_discarded_counts_the_usage_its_provider_sent(
    start_node: NodeFactory,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,  # noqa: F811
) -> None:
    """A held stream (``governance.held``) that broke the contract was counted as an estimate
    (the node's guess of the input, the output from its text), as if its provider had said
    nothing, though its usage chunk said 5 and 5."""
    answers = {"sim-fast": '{"age": "forty-two"}', "sim-smart": '{"age": 42}'}

    async def completions(request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model}
        for event in (
            {
                **chunk,
                "choices": [{"index": 0, "delta": {"content": answers[model]}, "finish_reason": "stop"}],
            },
            {**chunk, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5}},
        ):
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    profile = {"output": {"contract": {"on_failure": "retry"}}}
    async with upstream_at(completions) as base_url:
        snap = _budgeted(governed(base_url, profile, policy=RETRY_TWICE))
        node = await serving(start_node, snap, signing_key, tmp_path)
        events = stub_for(node).InferStream(asks_for_age("held-usage"), metadata=AUTH, timeout=10)
        received = [event async for event in events]
    both = _nanos(node, "sim-fast") + _nanos(node, "sim-smart")
    assert received[-1].end.cost.total_nanos == both
    record = one_record(node, "held-usage")
    assert [a["outcome"] for a in record["routing"]["attempts"]] == ["output_contract", "ok"]
    assert record["usage"] == {
        "input_tokens": 10,
        "output_tokens": 10,
        "cached_input_tokens": 0,
        "cache_write_input_tokens": 0,
        "reasoning_output_tokens": 0,
    }
    assert record["cost"]["total_nanos"] == both
    await _settled(node, both)
