"""Checking huge tool schemas stalls no other caller, and the verdict cache stays bounded."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot

Stub = infer_pb2_grpc.InferServiceStub


@pytest.fixture
async def infer_stub(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> AsyncIterator[Stub]:
    """As the shared fixture, with models whose context window holds the worst-case request:
    its tool definitions are input too (about 255,000 tokens), which routing counts."""
    node = await start_node()
    snap = snapshot(1, simulator.base_url)
    for model in snap.models:
        model.context_window = 1_000_000
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        yield Stub(channel)


def _huge_schema(properties: int, salt: str) -> str:
    """A valid object schema with ``properties`` string properties (about 50 bytes each)."""
    props = {f"p{i:05d}": {"type": "string", "description": "a field"} for i in range(properties)}
    return json.dumps({"type": "object", "description": salt, "properties": props}, separators=(",", ":"))


def worst_case_request() -> infer_pb2.InferRequest:
    """The most schema-checking one request may ask for: four tools of 4,998 properties
    each (each schema 5,000 JSON objects with its root and ``properties``, the most the node
    checks: ``MAX_SCHEMA_OBJECTS``; about 1 MiB in all, each under the 256 KiB limit), never
    seen."""
    request = chat("use the tools")
    salt = uuid.uuid4().hex[:6]
    for t in range(4):
        request.tools.add(name=f"tool_{t}", parameters_json_schema=_huge_schema(4_998, f"{salt}{t}"))
    return request


async def test_a_request_with_huge_new_schemas_does_not_stall_other_callers(
    infer_stub: Stub,
) -> None:
    # Warm up the path (connections, first-use imports) so latencies are steady-state.
    for _ in range(3):
        await infer_stub.Infer(chat("warm"), metadata=AUTH, timeout=10)
    request = worst_case_request()
    assert 900_000 < request.ByteSize() < 1_048_576
    big_started = time.perf_counter()
    big = asyncio.ensure_future(infer_stub.Infer(request, metadata=AUTH, timeout=60))
    await asyncio.sleep(0.05)  # let the big request reach the node before measuring

    async def small(i: int) -> float:
        await asyncio.sleep(i * 0.01)  # 50 callers arriving over half a second
        started = time.perf_counter()
        response = await infer_stub.Infer(chat(f"small {i}"), metadata=AUTH, timeout=10)
        assert response.message.content[0].text
        return time.perf_counter() - started

    latencies = sorted(await asyncio.gather(*(small(i) for i in range(50))))
    assert not big.done(), "the worst-case request must still be in flight while the others are measured"
    response = await big
    assert response.model
    big_took = time.perf_counter() - big_started
    # Relative, not a wall-clock limit (this machine's speed moves with its load): a check
    # that held the event loop would make the callers that arrived during it wait about as
    # long as the big request itself took.
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    assert p99 < big_took / 4, (
        f"p99 {p99 * 1000:.1f} ms against {big_took * 1000:.0f} ms for the big request; "
        f"slowest {[round(x * 1000) for x in latencies[-5:]]} ms"
    )


async def test_a_single_schema_over_the_size_limit_is_refused_at_once(infer_stub: Stub) -> None:
    request = chat()
    request.tools.add(name="huge", parameters_json_schema=_huge_schema(20_000, "x"))
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await infer_stub.Infer(request, metadata=AUTH, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "tools[0].parameters_json_schema: JSON schema is" in (info.value.details() or "")
    assert "more than the limit of 262144" in (info.value.details() or "")
    assert time.perf_counter() - started < 5
