"""A node end to end: fail closed without a snapshot, serve once one applies, health, drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dataplane.app import DataPlaneNode
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.simulator import Behaviour
from tests.dataplane.conftest import AUTH, GatedUpstream, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually


async def _health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(response.status)


async def test_node_without_snapshot_answers_unavailable_and_is_not_serving(start_node: NodeFactory) -> None:
    node = await start_node()
    assert await _health(node.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(chat(), metadata=AUTH, timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no valid configuration snapshot" in (info.value.details() or "")


async def test_applied_snapshot_serves_and_turns_health_serving(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node()
    result = await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))
    assert result.accepted, result.reason
    await eventually(lambda: _serving(node), message="health SERVING after the first snapshot")
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        response = await stub.Infer(chat("ping"), metadata=AUTH, timeout=10)
    assert response.model == "sim-fast"
    assert response.snapshot_version == 1
    assert response.evidence_id
    assert response.correlation_id
    assert response.message.content[0].text


async def _serving(node: DataPlaneNode) -> bool:
    return await _health(node.address) == health_pb2.HealthCheckResponse.SERVING


async def test_sigterm_drains_an_in_flight_request(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node(drain_seconds=10.0)
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=400))
    serve = asyncio.create_task(node.serve(signals=(signal.SIGUSR1,)))
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        call = stub.Infer(chat("slow"), metadata=AUTH, timeout=10)
        await eventually(lambda: simulator.stats("sim-fast").chat >= 1, message="request reached upstream")
        signal.raise_signal(signal.SIGUSR1)
        response = await call
    assert response.message.content[0].text
    await asyncio.wait_for(serve, 10)


async def test_stop_drains_an_open_stream_and_refuses_new_calls(
    start_node: NodeFactory, gated_upstream: GatedUpstream, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node(drain_seconds=10.0)
    snap = snapshot(1, gated_upstream.base_url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        call = stub.InferStream(chat(), metadata=AUTH, timeout=10)
        assert (await call.read()).HasField("start")
        assert (await call.read()).delta.text == "first "
        stopping = asyncio.create_task(node.stop())

        async def refused() -> bool:
            # NOT_FOUND while serving (no upstream involved); UNAVAILABLE once draining.
            try:
                await stub.Infer(chat(model="no-such-model"), metadata=AUTH, timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code() is grpc.StatusCode.UNAVAILABLE
            return False

        # Draining: new calls are refused while the open stream continues.
        await eventually(refused, message="new calls refused during drain")
        assert node.stopping
        gated_upstream.release.set()
        rest = []
        while (event := await call.read()) is not grpc.aio.EOF:
            rest.append(event)
        assert rest[-1].HasField("end")
        await asyncio.wait_for(stopping, 10)


async def test_stop_goes_on_without_a_task_that_swallows_its_cancellation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A background task that does not end when cancelled (a cancellation swallowed in a
    library) is named in the log and left behind: the node's stop never hangs on it."""
    from dataplane import app

    monkeypatch.setattr(app, "TASK_STOP_SECONDS", 0.2)
    release, started = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # swallowed: keeps running

    async def failed() -> None:
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
    await started.wait()
    with caplog.at_level(logging.ERROR, logger=app.log.name):
        await asyncio.wait_for(app._cancel(task), timeout=30)
        broken = asyncio.get_running_loop().create_task(failed(), name="broken")
        await asyncio.wait({broken})
        await app._cancel(broken)
    assert "task stubborn did not end within 0s of its cancellation" in caplog.text
    assert "task broken had failed: RuntimeError('boom')" in caplog.text
    release.set()
    await task
