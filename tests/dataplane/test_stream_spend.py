"""What a streamed answer costs when its provider never says: a caller that hangs up, an
upstream that drops, a stream without a usage chunk. The provider was paid for what it
generated, so the node counts it (estimated) against the tenant's budget and in evidence,
never nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator.behaviour import Behaviour
from tests.dataplane.conftest import AUTH, GatedUpstream, NodeFactory, chat, envelope, snapshot
from tests.dataplane.upstream.rawserver import Peer, RawServer, openai_completion
from tests.dataplane.upstream.rawserver import answer as raw_answer
from tests.helpers import eventually

PROMPT = "x" * 400
"""About 100 input tokens as the node estimates them (sim-fast: 100 nano-USD a token)."""
BUDGET = 100_000
"""Nano-USD a day: a handful of such requests, each reserving about 16,000 before dispatch."""
SMALL = infer_pb2.GenerationParams(max_output_tokens=8)
"""A request's worst case within the budget (the model's maximum output is far beyond it)."""


def _records(node: DataPlaneNode) -> list[dict[str, Any]]:
    return list(read_records(log_path(node.settings.data_dir, node.settings.node_id)))


async def _limited_node(
    start_node: NodeFactory, upstream_url: str, key: Ed25519PrivateKey, tmp_path: Path, **settings: str
) -> DataPlaneNode:
    node = await start_node(data_dir=tmp_path / "node", quota_lease_interval=0.1)
    snap = snapshot(1, upstream_url, provider_type="openai_compatible", allowed=("sim-fast",))
    next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
        snapshot_pb2.Limits(budget_day_nanos=BUDGET)
    )
    for name, value in settings.items():
        snap.providers[0].settings[name] = value
    assert (await node.store.apply(envelope(snap, key))).accepted
    return node


async def test_a_caller_cannot_stream_past_its_budget_by_hanging_up_mid_answer(
    start_node: NodeFactory, gated_upstream: GatedUpstream, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The gated upstream sends its first chunk, then holds the stream (its usage would come
    last); the caller reads that chunk and cancels. Each such stream cost the tenant the
    input and what was generated: the budget runs out, it does not last for ever."""
    node = await _limited_node(start_node, gated_upstream.base_url, signing_key, tmp_path)
    params = infer_pb2.GenerationParams(max_output_tokens=8)
    refusals: list[str] = []
    served = 0
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for i in range(25):
            call = stub.InferStream(chat(PROMPT, params=params, correlation_id=f"hangup-{i}"), metadata=AUTH)
            try:
                assert (await call.read()).WhichOneof("event") == "start"
            except grpc.aio.AioRpcError as exc:
                refusals.append(f"{exc.code().name} {exc.details()}")
                # Leases come and go (a node hands back what an exhausted budget left it):
                # a refusal is final only if it still holds a few lease periods later.
                assert node.leaser is not None
                rounds = node.leaser.rounds
                await eventually(lambda r=rounds: node.leaser and node.leaser.rounds > r + 2)  # type: ignore[misc]
                continue
            assert (await call.read()).delta.text == "first "
            call.cancel()
            served += 1
            await eventually(
                lambda i=i: any(r["correlation_id"] == f"hangup-{i}" for r in _records(node)),  # type: ignore[misc]
                message="the hung-up stream's record",
            )
    # Each hung-up stream cost at least its 100 input tokens (10,000 nano-USD).
    assert served <= BUDGET // 10_000, (served, refusals)
    assert refusals, served
    assert all(r.startswith("RESOURCE_EXHAUSTED tenant acme budget per day exceeded") for r in refusals), (
        refusals
    )
    cancelled = [r for r in _records(node) if r["outcome"]["code"] == "CANCELLED"]
    assert len(cancelled) == served
    for record in cancelled:
        # The input the node reserved for and the output relayed: counted, and said to be an
        # estimate (the provider never sent its count).
        assert record["usage"]["estimated"] is True, record["usage"]
        assert record["usage"]["input_tokens"] >= 100
        assert record["usage"]["output_tokens"] == 2  # "first ": six characters
        assert record["cost"]["total_nanos"] >= 100 * 100, record["cost"]
    assert sum(r["cost"]["total_nanos"] for r in cancelled) <= BUDGET


async def test_an_upstream_cut_mid_stream_is_charged_for_what_it_sent(
    start_node: NodeFactory, gated_upstream: GatedUpstream, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    gated_upstream.cut = True
    node = await _limited_node(start_node, gated_upstream.base_url, signing_key, tmp_path)
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(
            chat(PROMPT, params=SMALL, correlation_id="cut"), metadata=AUTH, timeout=10
        )
        assert (await call.read()).WhichOneof("event") == "start"
        assert (await call.read()).delta.text == "first "
        gated_upstream.release.set()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    (record,) = [r for r in _records(node) if r["correlation_id"] == "cut"]
    assert record["outcome"]["code"] == "UNAVAILABLE"
    assert record["usage"]["estimated"] is True
    assert record["cost"]["total_nanos"] >= 100 * 100


async def test_a_stream_without_a_usage_chunk_is_charged_an_estimate(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """An OpenAI-compatible upstream told not to send ``stream_options`` sends no usage."""
    node = await _limited_node(start_node, simulator.base_url, signing_key, tmp_path, stream_usage="false")
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(
            chat(PROMPT, params=SMALL, correlation_id="no-usage"), metadata=AUTH, timeout=10
        )
        events = [e async for e in call]
    end = events[-1].end
    text = "".join(e.delta.text for e in events if e.HasField("delta"))
    (record,) = [r for r in _records(node) if r["correlation_id"] == "no-usage"]
    assert record["outcome"]["code"] == "OK"
    assert record["usage"]["estimated"] is True
    # Four characters a token, at most the request's max tokens (the simulator ignores it).
    assert record["usage"]["output_tokens"] == min(-(-len(text) // 4), SMALL.max_output_tokens)
    assert record["cost"]["total_nanos"] > 0
    assert end.cost.total_nanos == record["cost"]["total_nanos"]


async def test_a_request_cut_by_its_deadline_counts_as_generated_in_full(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The upstream had the request and may bill all of it (providers finish a generation
    whose caller stopped waiting). It cost nothing: a caller setting a short deadline had
    every request free against its budget, whatever the provider billed."""
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=5_000))
    node = await _limited_node(start_node, simulator.base_url, signing_key, tmp_path)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(
                chat(PROMPT, params=SMALL, correlation_id="cut-short"),
                metadata=AUTH,
                timeout=1.0,
            )
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    [record] = [r for r in _records(node) if r["correlation_id"] == "cut-short"]
    assert record["outcome"]["code"] == "DEADLINE_EXCEEDED"
    assert [a["outcome"] for a in record["routing"]["attempts"]] == ["timeout"]
    usage = record["usage"]
    assert (usage["output_tokens"], usage["estimated"]) == (SMALL.max_output_tokens, True)
    assert usage["input_tokens"] >= len(PROMPT) // 4
    assert record["cost"]["total_nanos"] > 0


async def test_a_request_cancelled_while_the_upstream_has_it_counts_as_generated_in_full(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """As a deadline: the caller hanging up does not stop the provider billing. The record
    also names the attempt that was in flight, which it did not before."""
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=5_000))
    node = await _limited_node(start_node, simulator.base_url, signing_key, tmp_path)
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).Infer(
            chat(PROMPT, params=SMALL, correlation_id="hung-up"), metadata=AUTH, timeout=30
        )
        await eventually(
            lambda: simulator.stats("sim-fast").chat == 1, message="the upstream has the request"
        )
        call.cancel()
        await eventually(
            lambda: any(r["correlation_id"] == "hung-up" for r in _records(node)), message="the record"
        )
    [record] = [r for r in _records(node) if r["correlation_id"] == "hung-up"]
    assert record["outcome"]["code"] == "CANCELLED"
    assert [(a["model"], a["outcome"]) for a in record["routing"]["attempts"]] == [("sim-fast", "cancelled")]
    assert (record["usage"]["output_tokens"], record["usage"]["estimated"]) == (SMALL.max_output_tokens, True)
    assert record["cost"]["total_nanos"] > 0


def _sse(*events: dict[str, Any]) -> bytes:
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return raw_answer(body, headers="Content-Type: text/event-stream\r\n").replace(
        b"Content-Type: application/json\r\n", b"", 1
    )


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_an_answer_served_after_a_timed_out_attempt_also_counts_that_attempt(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey, tmp_path: Path, streamed: bool
) -> None:
    """The first attempt has the request and stalls past the deployment's timeout; the retry
    answers. Both were sent: the served answer's usage and the timed-out attempt's estimate."""
    answer = openai_completion("sim-fast", prompt_tokens=100, completion_tokens=2)

    async def stall_the_first(server: RawServer, peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            server.requests.append(request)
            if len(server.requests) == 1:
                await peer.wait_closed_by_client()  # never answers: the node's timeout ends it
                return
            if not streamed:
                await peer.send(raw_answer(answer))
                continue
            chunk = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "sim-fast"}
            await peer.send(
                _sse(
                    {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]},
                    {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                    {**chunk, "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 2}},
                )
            )

    async with RawServer(stall_the_first) as upstream:
        node = await start_node(data_dir=tmp_path / "node", quota_lease_interval=0.1)
        snap = snapshot(
            1, upstream.url, provider_type="openai_compatible", allowed=("sim-fast",), timeout_ms=300
        )
        next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
            snapshot_pb2.Limits(budget_day_nanos=BUDGET)
        )
        policy = json.loads(snap.policies[0].document_json)
        policy["retry"] = {"max_attempts": 2, "attempts_per_deployment": 2, "backoff_base_ms": 1}
        snap.policies[0].document_json = json.dumps(policy)
        assert (await node.store.apply(envelope(snap, signing_key))).accepted
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            request = chat(PROMPT, params=SMALL, correlation_id="second-try")
            if streamed:
                async for _ in stub.InferStream(request, metadata=AUTH, timeout=30):
                    pass
            else:
                await stub.Infer(request, metadata=AUTH, timeout=30)
    [record] = [r for r in _records(node) if r["correlation_id"] == "second-try"]
    assert [a["outcome"] for a in record["routing"]["attempts"]] == ["timeout", "ok"]
    usage = record["usage"]
    assert usage["estimated"] is True
    assert usage["output_tokens"] == 2 + SMALL.max_output_tokens
    assert usage["input_tokens"] > 100 + len(PROMPT) // 4


async def test_a_hedge_that_lost_counts_and_a_cancelled_hedged_request_records_its_flights(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A hedge's losing attempt was sent and cancelled once the other answered: the upstream
    had it, and may bill it. A hedged request whose caller went away recorded no attempts at
    all (its flights were cancelled as a group) and cost nothing."""
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=2_000))
    node = await start_node(data_dir=tmp_path / "node", quota_lease_interval=0.1)
    snap = snapshot(1, simulator.base_url, allowed=("sim-fast", "sim-smart"))
    policy = json.loads(snap.policies[0].document_json)
    policy["rules"] = [{"models": ["sim-fast", "sim-smart"], "strategy": "priority"}]
    policy["retry"] = {"max_attempts": 2, "hedge": {"after_ms": 50, "max_extra": 1}}
    snap.policies[0].document_json = json.dumps(policy)
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        await stub.Infer(chat(PROMPT, params=SMALL, correlation_id="hedged"), metadata=AUTH, timeout=30)
        simulator.set_behaviour("sim-smart", Behaviour(latency_ms=2_000))
        call = stub.Infer(chat(PROMPT, params=SMALL, correlation_id="hedged-gone"), metadata=AUTH, timeout=30)
        await eventually(lambda: simulator.stats("sim-smart").chat == 2, message="both flights upstream")
        call.cancel()
        await eventually(
            lambda: any(r["correlation_id"] == "hedged-gone" for r in _records(node)), message="the record"
        )
    records = {r["correlation_id"]: r for r in _records(node)}
    served = records["hedged"]
    assert [(a["model"], a["outcome"]) for a in served["routing"]["attempts"]] == [
        ("sim-fast", "hedged"),
        ("sim-smart", "ok"),
    ]
    assert served["usage"]["estimated"] is True
    assert served["usage"]["output_tokens"] > SMALL.max_output_tokens  # the loser's cap, and the answer
    gone = records["hedged-gone"]
    assert gone["outcome"]["code"] == "CANCELLED"
    assert [(a["model"], a["outcome"]) for a in gone["routing"]["attempts"]] == [
        ("sim-fast", "cancelled"),
        ("sim-smart", "cancelled"),
    ]
    assert gone["usage"]["output_tokens"] == 2 * SMALL.max_output_tokens
    assert gone["cost"]["total_nanos"] > 0


async def test_a_stream_cancelled_before_its_first_chunk_records_and_counts_the_attempt(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The upstream has the request and has not answered yet when the caller goes away: as
    a unary request, not free, and the record names the attempt."""
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=5_000))
    node = await _limited_node(start_node, simulator.base_url, signing_key, tmp_path)
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(
            chat(PROMPT, params=SMALL, correlation_id="gone-early"), metadata=AUTH, timeout=30
        )
        # Counted as chat until its latency has passed (the simulator learns it streams after).
        await eventually(lambda: simulator.stats("sim-fast").total == 1, message="the upstream has it")
        call.cancel()
        await eventually(
            lambda: any(r["correlation_id"] == "gone-early" for r in _records(node)), message="the record"
        )
    [record] = [r for r in _records(node) if r["correlation_id"] == "gone-early"]
    assert record["outcome"]["code"] == "CANCELLED"
    assert record["timings"]["total_ms"] < 4_000  # the caller's hang-up ended it, not the upstream
    assert [(a["model"], a["outcome"]) for a in record["routing"]["attempts"]] == [("sim-fast", "cancelled")]
    assert (record["usage"]["output_tokens"], record["usage"]["estimated"]) == (SMALL.max_output_tokens, True)
    assert record["cost"]["total_nanos"] > 0


async def test_a_stream_whose_usage_reports_contradict_counts_the_highest(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Usage in a stream is cumulative; the node counted only the last report, so an upstream
    that reported 100 + 50 tokens and then 1 + 1 had the tenant charged for two tokens."""
    chunk = {"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1, "model": "sim-fast"}

    async def contradicts_itself(server: RawServer, peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(
                _sse(
                    {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
                    {**chunk, "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 50}},
                    {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                    {**chunk, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
                )
            )

    async with RawServer(contradicts_itself) as upstream:
        node = await _limited_node(start_node, upstream.url, signing_key, tmp_path)
        async with grpc.aio.insecure_channel(node.address) as channel:
            # Max tokens above the 50 claimed: within what the request made possible.
            params = infer_pb2.GenerationParams(max_output_tokens=64)
            request = chat(PROMPT, params=params, correlation_id="contradicts")
            events = [
                e async for e in infer_pb2_grpc.InferServiceStub(channel).InferStream(request, metadata=AUTH)
            ]
    assert events[-1].end.usage.output_tokens == 50
    [record] = [r for r in _records(node) if r["correlation_id"] == "contradicts"]
    assert (record["usage"]["input_tokens"], record["usage"]["output_tokens"]) == (100, 50)
    assert "estimated" not in record["usage"]
