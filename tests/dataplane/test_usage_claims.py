"""A provider's usage claim beyond what the request made possible is counted at its caps.

The upstream here is a real HTTP server speaking OpenAI's wire format that claims 999,999,999
completion tokens (or prompt tokens) for a two-character answer. Billed, budgeted and recorded
as claimed, one such answer drained the tenant's daily budget. Now output is capped at the
request's max tokens (else the model's declared maximum) and input at the model's context
window, on both doors, unary and streamed; the evidence keeps the claim verbatim under
``usage.capped``, the node logs a WARNING and counts ``signalbox_usage_capped_total``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from dataplane.accounting import capped_usage, cost_of
from dataplane.app import DataPlaneNode
from dataplane.chat import ChatResponse, FinishReason, Message, Role, TextPart, Usage
from dataplane.config.model import Capability, DeploymentConfig, ModelConfig, ProviderConfig
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.outcome import OK
from dataplane.pipeline.trace import Trace, record_fields, shadow_fields
from dataplane.quota.buckets import Kind
from dataplane.routing.candidate import Candidate
from dataplane.routing.shadow import ShadowOutcome
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, snapshot
from tests.dataplane.upstream.rawserver import Peer, RawServer, openai_completion
from tests.dataplane.upstream.rawserver import answer as raw_answer
from tests.helpers import eventually

ABSURD = 999_999_999
"""Within ``MAX_TOKEN_COUNT``: a count the adapters accept as a number, and trusted before."""
BUDGET = 1_000_000
"""Nano-USD a day: 2,500 output tokens of sim-fast (400 nano-USD each), far from 999,999,999."""
MAX_TOKENS = 8
CONTEXT_WINDOW = 128_000  # the test snapshot's
MODEL_MAX_OUTPUT = 4096  # the test snapshot's
OUT_PRICE = 400  # sim-fast, nano-USD a token
COST = 5 * 100 + MAX_TOKENS * OUT_PRICE
"""Nano-USD of one answer as counted: 5 input tokens at 100, 8 output tokens at 400."""
CHUNK = {"id": "chatcmpl-c", "object": "chat.completion.chunk", "created": 1, "model": "sim-fast"}


def _sse(*events: dict[str, Any]) -> bytes:
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return raw_answer(body).replace(b"Content-Type: application/json", b"Content-Type: text/event-stream", 1)


def _claiming(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int | None = None) -> Any:
    """A handler answering every request "hi" with the given usage, plainly or streamed
    (``reasoning_tokens``: the part of the completion tokens a reasoning model spent reasoning)."""

    async def handler(server: RawServer, peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            server.requests.append(request)
            if not json.loads(request.body).get("stream"):
                answer = openai_completion(
                    "sim-fast",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    reasoning_tokens=reasoning_tokens,
                )
                await peer.send(raw_answer(answer))
                continue
            usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
            if reasoning_tokens is not None:
                usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
            await peer.send(
                _sse(
                    {**CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]},
                    {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                    {**CHUNK, "choices": [], "usage": usage},
                )
            )

    return handler


async def _node(
    start_node: NodeFactory, url: str, key: Ed25519PrivateKey, tmp_path: Path, **model: int
) -> DataPlaneNode:
    node = await start_node(
        data_dir=tmp_path / "node",
        quota_lease_interval=0.1,
        metrics_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
    )
    snap = snapshot(1, url, provider_type="openai_compatible", allowed=("sim-fast",))
    next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
        snapshot_pb2.Limits(budget_day_nanos=BUDGET)
    )
    for name, value in model.items():
        setattr(next(m for m in snap.models if m.alias == "sim-fast"), name, value)
    assert (await node.store.apply(envelope(snap, key))).accepted
    return node


def _record(node: DataPlaneNode, correlation_id: str) -> dict[str, Any]:
    records = read_records(log_path(node.settings.data_dir, node.settings.node_id))
    (record,) = [r for r in records if r["correlation_id"] == correlation_id]
    return record


async def _grpc(node: DataPlaneNode, cid: str, streamed: bool, max_tokens: int | None) -> int:
    """One request on the gRPC door; the output tokens its answer says."""
    return int((await _grpc_usage(node, cid, streamed, max_tokens)).output_tokens)


async def _grpc_usage(
    node: DataPlaneNode, cid: str, streamed: bool, max_tokens: int | None, model: str = ""
) -> common_pb2.Usage:
    """One request on the gRPC door; the usage its answer (or its stream's end) says."""
    params = infer_pb2.GenerationParams(max_output_tokens=max_tokens) if max_tokens else None
    request = chat("hello", correlation_id=cid, params=params, model=model)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        if streamed:
            events = [e async for e in stub.InferStream(request, metadata=AUTH, timeout=30)]
            return events[-1].end.usage
        return (await stub.Infer(request, metadata=AUTH, timeout=30)).usage


async def _http(node: DataPlaneNode, cid: str, streamed: bool, max_tokens: int | None) -> int:
    """One request on the OpenAI-compatible HTTP door; the completion tokens its answer says."""
    return int((await _http_usage(node, cid, streamed, max_tokens))["completion_tokens"])


async def _http_usage(node: DataPlaneNode, cid: str, streamed: bool, max_tokens: int | None) -> Any:
    """One request on the OpenAI-compatible HTTP door; the usage its answer says."""
    body: dict[str, Any] = {"model": "sim-fast", "messages": [{"role": "user", "content": "hello"}]}
    if max_tokens:
        body["max_completion_tokens"] = max_tokens
    if streamed:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {API_KEY}", "x-request-id": cid}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{node.http_address}/v1/chat/completions", json=body, headers=headers
        ) as response,
    ):
        assert response.status == 200, await response.text()
        if not streamed:
            return (await response.json())["usage"]
        lines = [line for line in (await response.text()).splitlines() if line.startswith("data: {")]
        return json.loads(lines[-1][6:])["usage"]


async def _spent(node: DataPlaneNode, nanos: int) -> None:
    """The tenant's daily budget counts ``nanos`` spent: what the node's ledger granted less
    what the node still holds (once no lease is under way)."""

    def spent() -> int:
        assert node.ledger is not None
        assert node.quotas is not None
        bucket = node.quotas.buckets[("t-acme", "", Kind.BUDGET_DAY)]
        return int(node.ledger.spent("t-acme", "", Kind.BUDGET_DAY) - bucket.holding)

    await eventually(lambda: spent() == nanos, message=f"{nanos} nano-USD spent")


async def _tenant_metric(node: DataPlaneNode, name: str = "signalbox_usage_capped_total") -> float:
    async with aiohttp.ClientSession() as session, session.get(f"http://{node.metrics_address}/metrics") as r:
        text = await r.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.labels["tenant"] == "t-acme"
    )


@pytest.mark.parametrize("door", [_grpc, _http], ids=["grpc", "http"])
@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_an_absurd_output_claim_is_counted_at_the_requests_max_tokens(
    start_node: NodeFactory,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    door: Any,
    streamed: bool,
) -> None:
    async with RawServer(_claiming(5, ABSURD, reasoning_tokens=ABSURD)) as upstream:
        node = await _node(start_node, upstream.url, signing_key, tmp_path)
        with caplog.at_level(logging.WARNING, logger="signalbox.dataplane.pipeline"):
            answered = await door(node, "absurd", streamed, MAX_TOKENS)
        # The tenant's budget counts the answer's 8 tokens, not 999,999,999 (400 USD, which
        # exhausted its 0.001 USD a day).
        await _spent(node, COST)
        metric = await _tenant_metric(node)
    assert answered == MAX_TOKENS  # the caller is told what it is billed
    record = _record(node, "absurd")
    assert record["outcome"]["code"] == "OK"
    usage = record["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (5, MAX_TOKENS)
    assert usage["reasoning_output_tokens"] == MAX_TOKENS
    assert "estimated" not in usage
    assert usage["capped"] == [
        {
            "model": "sim-fast",
            "deployment": "d-sim-fast",
            "reported": {
                "input_tokens": 5,
                "output_tokens": ABSURD,
                "cached_input_tokens": 0,
                "cache_write_input_tokens": 0,
                "reasoning_output_tokens": ABSURD,
            },
            "counted": {
                "input_tokens": 5,
                "output_tokens": MAX_TOKENS,
                "cached_input_tokens": 0,
                "cache_write_input_tokens": 0,
                "reasoning_output_tokens": MAX_TOKENS,
            },
            "max_input_tokens": CONTEXT_WINDOW,
            "max_output_tokens": MAX_TOKENS,
        }
    ]
    assert record["cost"]["output_nanos"] == MAX_TOKENS * OUT_PRICE
    assert metric == 1
    warnings = [r.getMessage() for r in caplog.records if "claimed usage beyond" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "request absurd:" in warnings[-1]
    assert f"(input 5, output {ABSURD} tokens); counted input 5, output {MAX_TOKENS}" in warnings[-1]
    assert all(API_KEY not in w for w in warnings)


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_the_grpc_door_answers_the_reasoning_tokens_its_provider_reported(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey, tmp_path: Path, streamed: bool
) -> None:
    """A reasoning model's provider says how many of its completion tokens were reasoning
    (billed as output); the HTTP door answered them, the gRPC door's Usage had no field for
    them, so a gRPC caller reconciling its bill could not."""
    async with RawServer(_claiming(5, 30, reasoning_tokens=28)) as upstream:
        free = {"input_price_nanos_per_mtok": 0, "output_price_nanos_per_mtok": 0}  # two requests
        node = await _node(start_node, upstream.url, signing_key, tmp_path, **free)
        usage = await _grpc_usage(node, "reasons", streamed, None)
        # At the caps too: reasoning is output, bounded by the request's max tokens.
        capped = await _grpc_usage(node, "reasons-capped", streamed, MAX_TOKENS)
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5, 30, 35)
    assert usage.reasoning_output_tokens == 28
    assert (capped.output_tokens, capped.reasoning_output_tokens) == (MAX_TOKENS, MAX_TOKENS)
    # The evidence says it too: the record is what a bill is reconciled against.
    assert _record(node, "reasons")["usage"]["reasoning_output_tokens"] == 28
    assert _record(node, "reasons-capped")["usage"]["reasoning_output_tokens"] == MAX_TOKENS
    # And the metrics, which had only input and output (gen_ai.usage.reasoning.output_tokens).
    assert await _tenant_metric(node, "signalbox_reasoning_output_tokens_sum") == 28 + MAX_TOKENS
    assert await _tenant_metric(node, "signalbox_reasoning_output_tokens_count") == 2


IDENTITY = ("correlation_id", "record_id", "seq", "hash", "prev_hash", "ts", "timings", "request_sha256")
"""Members of a record that are of the request, not of what was decided and counted for it
(``request_sha256`` is of the bytes as each door received them)."""


def _decided(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without ``IDENTITY`` and its attempts' durations."""
    decided = {k: v for k, v in record.items() if k not in IDENTITY}
    attempts = [{k: v for k, v in a.items() if k != "duration_ms"} for a in decided["routing"]["attempts"]]
    decided["routing"] = {**decided["routing"], "attempts": attempts}
    return decided


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_the_same_request_through_both_doors_is_answered_and_recorded_the_same(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey, tmp_path: Path, streamed: bool
) -> None:
    """One request to a reasoning model, on the gRPC door and on the HTTP door: the same
    evidence (routing, usage, cost, outcome), and each door answers the usage its record
    holds. The HTTP door answered the reasoning tokens while gRPC's Usage and the record
    had no place for them, so a bill reconciled against the evidence did not add up."""
    async with RawServer(_claiming(5, 30, reasoning_tokens=28)) as upstream:
        node = await _node(start_node, upstream.url, signing_key, tmp_path)
        via_grpc = await _grpc_usage(node, "via-grpc", streamed, 100, model="sim-fast")
        await _leased(node)  # the first request went on credit, the second waits for a lease
        via_http = await _http_usage(node, "via-http", streamed, 100)
    grpc_record, http_record = _record(node, "via-grpc"), _record(node, "via-http")
    assert _decided(grpc_record) == _decided(http_record)
    recorded = grpc_record["usage"]
    assert recorded == {
        "input_tokens": 5,
        "output_tokens": 30,
        "cached_input_tokens": 0,
        "cache_write_input_tokens": 0,
        "reasoning_output_tokens": 28,
    }
    assert {name: getattr(via_grpc, name) for name in recorded} == recorded
    assert {
        "input_tokens": via_http["prompt_tokens"],
        "output_tokens": via_http["completion_tokens"],
        "cached_input_tokens": via_http["prompt_tokens_details"]["cached_tokens"],
        "reasoning_output_tokens": via_http["completion_tokens_details"]["reasoning_tokens"],
    } == {k: v for k, v in recorded.items() if k != "cache_write_input_tokens"}  # not in OpenAI's shape
    assert grpc_record["cost"]["total_nanos"] == 5 * 100 + 30 * OUT_PRICE


async def _leased(node: DataPlaneNode) -> None:
    """The tenant's daily budget holds a lease with room for another request."""

    def leased() -> bool:
        assert node.quotas is not None
        bucket = node.quotas.buckets[("t-acme", "", Kind.BUDGET_DAY)]
        return bucket.leased and bucket.holding > 100 * OUT_PRICE + 1000

    await eventually(leased, message="a budget lease")


async def _silent_flood(server: RawServer, peer: Peer) -> None:
    """Streams 40,000 characters to every request, ignoring its max tokens, with no usage."""
    while (request := await peer.request()) is not None:
        server.requests.append(request)
        text = {**CHUNK, "choices": [{"index": 0, "delta": {"content": "x" * 1000}}]}
        await peer.send(
            _sse(
                {**CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                *[text] * 40,
                {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            )
        )


@pytest.mark.parametrize("door", [_grpc, _http], ids=["grpc", "http"])
async def test_a_stream_without_usage_is_estimated_at_most_at_the_requests_max_tokens(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey, tmp_path: Path, door: Any
) -> None:
    """The node's own estimate (4 characters a token) of a provider that ignored the request's
    max tokens and reported nothing was billed uncapped: 10,000 tokens for a request of 8."""
    async with RawServer(_silent_flood) as upstream:
        node = await _node(start_node, upstream.url, signing_key, tmp_path)
        await door(node, "silent", True, MAX_TOKENS)
    usage = _record(node, "silent")["usage"]
    assert usage["estimated"] is True
    assert usage["output_tokens"] == MAX_TOKENS
    assert "capped" not in usage  # an estimate is the node's own figure, not a claim


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_without_max_tokens_output_is_capped_at_the_models_maximum_and_input_at_its_window(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey, tmp_path: Path, streamed: bool
) -> None:
    async with RawServer(_claiming(ABSURD, ABSURD)) as upstream:
        node = await _node(start_node, upstream.url, signing_key, tmp_path, output_price_nanos_per_mtok=0)
        assert await _grpc(node, "no-max", streamed, None) == MODEL_MAX_OUTPUT
    usage = _record(node, "no-max")["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (CONTEXT_WINDOW, MODEL_MAX_OUTPUT)
    (capped,) = usage["capped"]
    assert (capped["reported"]["input_tokens"], capped["reported"]["output_tokens"]) == (ABSURD, ABSURD)
    assert (capped["max_input_tokens"], capped["max_output_tokens"]) == (CONTEXT_WINDOW, MODEL_MAX_OUTPUT)


async def test_a_model_that_declares_no_limits_has_its_providers_claim_counted_as_made(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Nothing to cap by (no max tokens, no declared maximum or window): counted as claimed,
    and a claim within the caps is never marked."""
    async with RawServer(_claiming(300_000, 50_000)) as upstream:
        node = await _node(
            start_node,
            upstream.url,
            signing_key,
            tmp_path,
            context_window=0,
            max_output_tokens=0,
            input_price_nanos_per_mtok=0,
            output_price_nanos_per_mtok=0,
        )
        assert await _grpc(node, "undeclared", False, None) == 50_000
        assert await _grpc(node, "within", False, 50_000) == 50_000
    for cid in ("undeclared", "within"):
        usage = _record(node, cid)["usage"]
        assert (usage["input_tokens"], usage["output_tokens"]) == (300_000, 50_000)
        assert "capped" not in usage


MODEL = ModelConfig(
    "m-x",
    "x",
    frozenset({Capability.CHAT}),
    context_window=1000,
    max_output_tokens=100,
    input_price_nanos_per_mtok=1_000_000,
    output_price_nanos_per_mtok=1_000_000,
)
CANDIDATE = Candidate(
    MODEL, DeploymentConfig("d-x", "p-x", "x"), ProviderConfig("p-x", "x", "openai_compatible", "http://x")
)


def test_an_answer_governance_refused_counts_at_its_caps_too() -> None:
    """A discarded answer (an output block, a broken contract) is paid for, at its caps: its
    provider's claim was as untrusted as a served one's."""
    trace = Trace("infer", "cid-discard", 0.0, 0.0, "", max_output_tokens=10)
    said = ChatResponse(
        Message(Role.ASSISTANT, (TextPart("hi"),)), FinishReason.STOP, Usage(ABSURD, ABSURD, ABSURD)
    )
    trace.discard(CANDIDATE, said)
    assert trace.discarded == Usage(1000, 10, 1000)
    assert trace.discarded_cost == cost_of(MODEL, Usage(1000, 10, 1000))
    trace.usage, trace.cost = trace.discarded, trace.discarded_cost
    (capped,) = record_fields(trace, OK)["usage"]["capped"]
    assert capped["reported"]["output_tokens"] == ABSURD
    assert (capped["max_input_tokens"], capped["max_output_tokens"]) == (1000, 10)


def test_a_shadow_calls_claim_is_recorded_at_its_caps_too() -> None:
    trace = Trace("infer", "cid-shadow", 0.0, 0.0, "", max_output_tokens=10)
    said = ChatResponse(Message(Role.ASSISTANT, (TextPart("hi"),)), FinishReason.STOP, Usage(3, ABSURD))
    fields = shadow_fields(trace, ShadowOutcome(CANDIDATE, "ok", "", 5, said))
    assert (fields["usage"]["input_tokens"], fields["usage"]["output_tokens"]) == (3, 10)
    assert fields["usage"]["capped"][0]["reported"]["output_tokens"] == ABSURD
    assert fields["cost"]["total_nanos"] == cost_of(MODEL, Usage(3, 10)).total_nanos


@pytest.mark.parametrize(
    ("usage", "max_tokens", "embeds", "counted"),
    [
        (Usage(5, 7), None, False, None),  # within every cap: not marked
        (Usage(5, 101), None, False, Usage(5, 100)),  # the model's maximum output
        (Usage(5, 101), 200, False, None),  # a request's max tokens is the cap when given
        (Usage(5, 11), 10, False, Usage(5, 10)),
        (Usage(2000, 1, 1500, 1200), None, False, Usage(1000, 1, 1000, 1000)),  # cached parts too
        (Usage(5, 3), None, True, Usage(5, 0)),  # an embedding generates nothing
        (Usage(5, 90, reasoning_output_tokens=80), None, False, None),  # reasoning is output
        (Usage(5, 300, reasoning_output_tokens=250), None, False, Usage(5, 100, reasoning_output_tokens=100)),
    ],
)
def test_capped_usage(usage: Usage, max_tokens: int | None, embeds: bool, counted: Usage | None) -> None:
    capped = capped_usage(usage, MODEL, max_tokens, embeds)
    assert (capped.counted if capped else None) == counted
    if capped is not None:
        assert capped.reported == usage
