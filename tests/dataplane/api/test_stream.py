"""InferStream: start, deltas as the upstream produces them, end; cancelling closes the upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Behaviour
from tests.dataplane.conftest import AUTH, GatedUpstream, NodeFactory, _sse_chunk, chat, envelope, snapshot
from tests.helpers import eventually


async def _events(call: Any) -> list[infer_pb2.InferStreamEvent]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def test_stream_start_deltas_end(infer_stub: infer_pb2_grpc.InferServiceStub) -> None:
    call = infer_stub.InferStream(
        chat("tell me a story", correlation_id="cid-stream"), metadata=AUTH, timeout=10
    )
    events = await _events(call)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    # Deltas: the simulator's chunks, those that arrived together sent as one (the relay).
    assert set(kinds[1:-1]) == {"delta"}
    start, end = events[0].start, events[-1].end
    assert start.correlation_id == "cid-stream"
    assert start.model == "sim-fast"
    text = "".join(e.delta.text for e in events[1:-1])
    assert text == "Simulated answer to: tell me a story"
    assert end.finish_reason == infer_pb2.FINISH_REASON_STOP
    assert end.usage.output_tokens > 0
    assert end.cost.total_nanos > 0
    assert end.routing.chosen_model == "sim-fast"
    assert end.evidence_id
    assert end.snapshot_version == 1
    assert ("x-correlation-id", "cid-stream") in tuple(await call.trailing_metadata() or ())


async def test_stream_refusal_has_the_status_before_any_event(
    infer_stub: infer_pb2_grpc.InferServiceStub,
) -> None:
    call = infer_stub.InferStream(chat(model="no-such-model"), metadata=AUTH, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _events(call)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_stream_upstream_500_is_unavailable(
    infer_stub: infer_pb2_grpc.InferServiceStub, simulator: Any
) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(fail_status=500))
    call = infer_stub.InferStream(chat(correlation_id="cid-s500"), metadata=AUTH, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _events(call)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "cid-s500" in (info.value.details() or "")


@pytest.fixture
async def gated_node(
    start_node: NodeFactory, gated_upstream: GatedUpstream, signing_key: Ed25519PrivateKey
) -> DataPlaneNode:
    node = await start_node()
    snap = snapshot(1, gated_upstream.base_url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    return node


async def test_chunks_reach_the_caller_before_the_upstream_finishes(
    gated_node: DataPlaneNode, gated_upstream: GatedUpstream
) -> None:
    async with grpc.aio.insecure_channel(gated_node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(chat(), metadata=AUTH, timeout=10)
        start = await call.read()
        first = await call.read()
        # The upstream is still holding its stream open: the delta was not buffered.
        assert start.WhichOneof("event") == "start"
        assert first.delta.text == "first "
        assert not gated_upstream.finished.is_set()
        gated_upstream.release.set()
        rest = await _events(call)
    assert "".join(e.delta.text for e in rest if e.HasField("delta")) == "second"
    assert rest[-1].end.usage.output_tokens == 2


async def test_cancelling_the_caller_stream_closes_the_upstream_stream(
    gated_node: DataPlaneNode, gated_upstream: GatedUpstream
) -> None:
    async with grpc.aio.insecure_channel(gated_node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(chat(), metadata=AUTH, timeout=10)
        await call.read()
        await call.read()
        assert gated_upstream.first_sent.is_set()
        call.cancel()
        await eventually(gated_upstream.disconnected.is_set, message="upstream saw the hang-up")
    assert not gated_upstream.finished.is_set()


async def test_upstream_dropping_mid_stream_ends_the_call_with_unavailable(
    gated_node: DataPlaneNode, gated_upstream: GatedUpstream
) -> None:
    gated_upstream.cut = True
    async with grpc.aio.insecure_channel(gated_node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(
            chat(correlation_id="cid-cut"), metadata=AUTH, timeout=10
        )
        assert (await call.read()).HasField("start")
        assert (await call.read()).delta.text == "first "
        gated_upstream.release.set()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _events(call)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "cid-cut" in (info.value.details() or "")
        # The node keeps serving: the next stream (gate open, no cut) completes.
        gated_upstream.cut = False
        again = infer_pb2_grpc.InferServiceStub(channel).InferStream(chat(), metadata=AUTH, timeout=10)
        assert (await _events(again))[-1].HasField("end")


@dataclass
class DripUpstream(GatedUpstream):
    finish_after: float | None = None
    """Seconds of dripping after which the stream ends properly (None: it never does)."""


@pytest.fixture
async def dripping_upstream() -> AsyncIterator[DripUpstream]:
    """An OpenAI-compatible upstream that sends one chunk, then an SSE comment every 50 ms for
    as long as the caller stays (or for ``finish_after`` seconds, then the rest of a proper
    stream): each wait for bytes is short, the stream as long as it likes."""
    drip = DripUpstream()

    async def completions(request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(_sse_chunk(model, {"role": "assistant", "content": "first "}))
            drip.first_sent.set()
            started = time.monotonic()
            while drip.finish_after is None or time.monotonic() - started < drip.finish_after:
                await asyncio.sleep(0.05)  # the upstream's pace, not a test waiting for a condition
                await response.write(b": still here\n\n")
            await response.write(_sse_chunk(model, {"content": "last"}, "stop"))
            await response.write(b"data: [DONE]\n\n")
            drip.finished.set()
        except (asyncio.CancelledError, ConnectionResetError):
            drip.disconnected.set()
            raise
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    drip.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield drip
    await runner.cleanup()


async def test_a_stream_that_drips_forever_ends_at_the_nodes_deadline(
    start_node: NodeFactory, dripping_upstream: DripUpstream, signing_key: Ed25519PrivateKey
) -> None:
    """After the first chunk, every wait for bytes is short but the stream never ends: the node
    must end it at the request's deadline itself (DEADLINE_EXCEEDED with the correlation id,
    before the caller gives up on its own) and hang up on the upstream."""
    node = await start_node()
    snap = snapshot(1, dripping_upstream.base_url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(
            chat(correlation_id="cid-drip"), metadata=AUTH, timeout=2
        )
        assert (await call.read()).HasField("start")
        assert (await call.read()).delta.text == "first "
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _events(call)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "cid-drip" in (info.value.details() or ""), "the node's own answer, not the caller's timer"
    await eventually(dripping_upstream.disconnected.is_set, message="the upstream saw the hang-up")


async def test_a_stream_without_a_deadline_may_outlast_a_calls_budget(
    start_node: NodeFactory, dripping_upstream: DripUpstream, signing_key: Ed25519PrivateKey
) -> None:
    """Without the caller's deadline a stream has ``--stream-timeout``, not the unary
    ``--default-timeout``: a long answer is what streams are for."""
    node = await start_node(default_timeout=0.3, stream_timeout=30.0)
    snap = snapshot(1, dripping_upstream.base_url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    dripping_upstream.finish_after = 1.0
    async with grpc.aio.insecure_channel(node.address) as channel:
        events = await _events(infer_pb2_grpc.InferServiceStub(channel).InferStream(chat(), metadata=AUTH))
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == "first last"
    assert events[-1].end.finish_reason == infer_pb2.FINISH_REASON_STOP
    assert dripping_upstream.finished.is_set()


async def test_a_stream_without_a_deadline_ends_at_the_stream_timeout(
    start_node: NodeFactory, dripping_upstream: DripUpstream, signing_key: Ed25519PrivateKey
) -> None:
    """An upstream that drips forever to a caller that set no deadline: the node ends the
    stream at ``--stream-timeout`` (DEADLINE_EXCEEDED with the correlation id) and hangs up."""
    node = await start_node(default_timeout=60.0, stream_timeout=1.0)
    snap = snapshot(1, dripping_upstream.base_url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(
            chat(correlation_id="cid-drip-default"), metadata=AUTH
        )
        # Far longer than the 1 s it should take, far shorter than the unary 60 s.
        async with asyncio.timeout(20):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _events(call)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "cid-drip-default" in (info.value.details() or "")
    await eventually(dripping_upstream.disconnected.is_set, message="the upstream saw the hang-up")
