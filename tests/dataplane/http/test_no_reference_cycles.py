"""What the HTTP door leaves behind is freed by reference counting alone.

A serving worker runs the cyclic garbage collector seldom (``dataplane.collector``): a
reference cycle made per request or per connection would hold its memory (a request's body,
a connection's buffers) until a collection many thousands of objects later. Each test
serves one kind of exchange with the collector off, then collects with ``DEBUG_SAVEALL``
and looks for the node's own objects among the garbage: there must be none. The test's
client and the simulator (aiohttp) leave cycles of their own, which are not counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator.behaviour import Behaviour
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, snapshot
from tests.dataplane.cycles import Garbage, garbage
from tests.dataplane.governance.test_node_governance import governed, rule, serving
from tests.dataplane.test_airgap_limits import _pin as _limits_pin
from tests.dataplane.test_airgap_limits import _pinned
from tests.helpers import eventually

ROUNDS = 20
CHAT = {"model": "sim-fast", "messages": [{"role": "user", "content": "hello there, how are you"}]}
STREAM_FIELDS = {"stream": True, "stream_options": {"include_usage": True}}
STREAM = {**CHAT, **STREAM_FIELDS}


def _head(
    body: bytes,
    *,
    key: str = API_KEY,
    close: bool = False,
    path: str = "/v1/chat/completions",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "host: node",
        f"authorization: Bearer {key}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(["connection: close"] if close else []),
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _answer(reader: asyncio.StreamReader) -> int:
    """Read one whole answer (sized or chunked) and return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
    lowered = {k.strip().lower(): v.strip() for k, v in fields.items()}
    if lowered.get(b"transfer-encoding") == b"chunked":
        await reader.readuntil(b"0\r\n\r\n")
    else:
        await reader.readexactly(int(lowered.get(b"content-length", b"0")))
    return int(head.split(b" ", 2)[1])


class _Client:
    def __init__(self, node: DataPlaneNode) -> None:
        host, port = node.http_address.rsplit(":", 1)
        self.host, self.port = host, int(port)

    async def exchange(self, body: bytes, **head: Any) -> int:
        """One request on its own connection, closed by the client afterwards."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(_head(body, **head))
            return await _answer(reader)
        finally:
            writer.close()
            await writer.wait_closed()


async def _served(node: DataPlaneNode, run: Callable[[], Awaitable[object]], rounds: int = ROUNDS) -> Garbage:
    """Warm up once, then ``rounds`` runs with the collector off; what they left."""
    await run()
    with garbage() as found:
        for _ in range(rounds):
            await run()
        # Handlers cancelled by a client that left finish on the loop, after the client.
        await eventually(lambda: not node._doors or not node._doors.http or not node._doors.http.connections)
    return found


async def _status(client: _Client, body: bytes, expected: int, **head: Any) -> None:
    assert await client.exchange(body, **head) == expected


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        pytest.param(orjson.dumps(CHAT), API_KEY, 200, id="served"),
        pytest.param(orjson.dumps(STREAM), API_KEY, 200, id="streamed"),
        pytest.param(b'{"model": "sim-fast", "messages": [' + b"x" * 50_000, API_KEY, 400, id="bad-json"),
        pytest.param(orjson.dumps({**CHAT, "temperature": "hot"}), API_KEY, 400, id="bad-field"),
        pytest.param(orjson.dumps(CHAT), "sk-not-a-key-0000000000", 401, id="unknown-key"),
        pytest.param(orjson.dumps({**CHAT, "model": "no-such-model"}), API_KEY, 404, id="unknown-model"),
    ],
)
async def test_requests_and_their_connections_leave_no_cycles(
    node: DataPlaneNode, body: bytes, key: str, expected: int
) -> None:
    client = _Client(node)
    assert (await _served(node, lambda: _status(client, body, expected, key=key))).ours == []


async def test_a_refused_header_leaves_no_cycles(node: DataPlaneNode) -> None:
    client = _Client(node)
    body = orjson.dumps(CHAT)
    bad = (("x-signalbox-timeout-ms", "soon"),)
    assert (await _served(node, lambda: _status(client, body, 400, headers=bad))).ours == []


async def test_an_invalid_request_id_leaves_no_cycles(node: DataPlaneNode) -> None:
    client = _Client(node)
    body = orjson.dumps(CHAT)
    bad = (("x-request-id", "x" * 300),)
    assert (await _served(node, lambda: _status(client, body, 400, headers=bad))).ours == []


async def test_a_connection_the_node_closes_leaves_no_cycles(node: DataPlaneNode) -> None:
    client = _Client(node)
    body = orjson.dumps(CHAT)
    assert (await _served(node, lambda: _status(client, body, 200, close=True))).ours == []


async def test_an_upstream_failure_leaves_no_cycles(node: DataPlaneNode, simulator: Any) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(fail_status=500))
    client = _Client(node)
    body = orjson.dumps(CHAT)
    assert (await _served(node, lambda: _status(client, body, 502))).ours == []


async def test_an_upstream_that_dies_mid_stream_leaves_no_cycles(node: DataPlaneNode, simulator: Any) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(drop_after_chunks=2))
    client = _Client(node)
    body = orjson.dumps(STREAM)
    assert (await _served(node, lambda: _status(client, body, 200))).ours == []


async def test_a_client_that_leaves_mid_stream_leaves_no_cycles(node: DataPlaneNode, simulator: Any) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(chunk_delay_ms=20))
    client = _Client(node)
    body = orjson.dumps(STREAM)

    async def leave() -> None:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(_head(body))
        await reader.readuntil(b"\r\n\r\n")
        await reader.readuntil(b"\r\n")  # the first chunk's size: the answer is under way
        writer.close()
        await writer.wait_closed()

    assert (await _served(node, leave)).ours == []


async def _get(client: _Client, path: str, expected: int) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: node\r\nauthorization: Bearer {API_KEY}\r\n\r\n".encode())
        assert await _answer(reader) == expected
    finally:
        writer.close()
        await writer.wait_closed()


async def test_embeddings_and_the_models_list_leave_no_cycles(node: DataPlaneNode) -> None:
    client = _Client(node)
    body = orjson.dumps({"model": "sim-embed", "input": ["one", "two"]})

    async def both() -> None:
        assert await client.exchange(body, path="/v1/embeddings") == 200
        await _get(client, "/v1/models", 200)

    assert (await _served(node, both)).ours == []


async def test_an_upstream_that_refuses_with_retry_after_leaves_no_cycles(
    node: DataPlaneNode, simulator: Any
) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(fail_status=429, retry_after=0.01))
    client = _Client(node)
    body = orjson.dumps(CHAT)
    assert (await _served(node, lambda: _status(client, body, 429))).ours == []


async def test_an_upstream_too_slow_for_the_deadline_leaves_no_cycles(
    node: DataPlaneNode, simulator: Any
) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=2_000))
    client = _Client(node)
    body = orjson.dumps(CHAT)
    deadline = (("x-signalbox-timeout-ms", "50"),)
    # Four timeouts: the fifth would open the deployment's breaker (a refusal tested above).
    assert (await _served(node, lambda: _status(client, body, 504, headers=deadline), rounds=3)).ours == []


async def _drained(events: AsyncIterator[object]) -> None:
    async for _ in events:
        pass


async def test_the_grpc_door_leaves_no_cycles_and_its_refusals_leave_grpc_none_of_the_request(
    node: DataPlaneNode,
) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)

        async def served() -> None:
            assert (await stub.Infer(chat(), metadata=AUTH, timeout=10)).message
            async for _ in stub.InferStream(chat(), metadata=AUTH, timeout=10):
                pass

        assert (await _served(node, served)).ours == []

        # grpc.aio keeps the exception of ``context.abort`` on the call's state, which the
        # handler's frame in its traceback reaches: a cycle of grpc's making, with the
        # handler's and ``abort``'s frames in it. The request (300 KB here) must not be.
        prompt = "x" * 300_000
        stranger = (("authorization", "Bearer sk-not-a-key-0000000000"),)

        async def refused() -> None:
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.Infer(chat(prompt), metadata=stranger, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                await _drained(stub.InferStream(chat(prompt), metadata=stranger, timeout=10))
            for info in (unary, streamed):
                assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED

        garbage = await _served(node, refused)
        assert set(garbage.ours) <= {
            "Outcome",
            "frame InferService.Infer",
            "frame InferService.InferStream",
            "frame abort",
        }, garbage.ours
        assert garbage.largest < 64 * 1024


@pytest.mark.parametrize(
    "behaviour",
    [
        pytest.param(Behaviour(chunk_delay_ms=20), id="the caller cancels mid-stream"),
        pytest.param(Behaviour(drop_after_chunks=2), id="the upstream dies mid-stream"),
        pytest.param(Behaviour(fail_status=500), id="the upstream answers 500"),
    ],
)
async def test_the_grpc_doors_streams_and_failures_leave_no_cycles(
    node: DataPlaneNode, simulator: Any, behaviour: Behaviour
) -> None:
    simulator.set_behaviour("sim-fast", behaviour)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)

        async def run() -> None:
            call = stub.InferStream(chat(model="sim-fast"), metadata=AUTH, timeout=10)
            failed: list[grpc.StatusCode] = []
            try:
                async for event in call:
                    if behaviour.chunk_delay_ms and event.HasField("delta"):
                        call.cancel()  # the caller leaves with the answer under way
                        break
            except grpc.aio.AioRpcError as exc:
                failed.append(exc.code())
            assert bool(failed) == (behaviour.chunk_delay_ms == 0), failed
            if behaviour.fail_status:
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Infer(chat(model="sim-fast"), metadata=AUTH, timeout=10)

        garbage = await _served(node, run, rounds=4)  # five failures would open the breaker
        # grpc.aio's own cycle of an aborted call (the test above): its frames, none of the request.
        allowed = {"Outcome", "frame InferService.Infer", "frame InferService.InferStream", "frame abort"}
        assert set(garbage.ours) <= allowed, garbage.ours
        assert garbage.largest < 64 * 1024


async def test_grpc_embeddings_leave_no_cycles(node: DataPlaneNode) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        request = infer_pb2.EmbedRequest(model="sim-embed", inputs=["one", "two"])

        async def run() -> None:
            assert len((await stub.Embed(request, metadata=AUTH, timeout=10)).embeddings) == 2

        assert (await _served(node, run)).ours == []


async def test_governance_masking_and_refusals_leave_no_cycles(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    # The simulator echoes the prompt, so a blocked term sent through the masked path comes
    # back and the output rule refuses it; the input rule refuses what it names itself.
    profile = {
        "limits": {"max_messages": 4},
        "input": {
            "rules": [
                rule("mask-email", "email", "mask"),
                rule("no-x", "terms", "block", options={"terms": ["xylophone"]}),
            ]
        },
        "output": {"rules": [rule("no-codename", "terms", "block", options={"terms": ["falcon"]})]},
    }
    node = await serving(start_node, governed(simulator.base_url, profile), signing_key, tmp_path)
    client = _Client(node)

    def asking(text: str) -> bytes:
        return orjson.dumps({**CHAT, "messages": [{"role": "user", "content": text}]})

    masked, blocked_in, blocked_out = asking("mail ada@example.org"), asking("a xylophone"), asking("falcon")
    too_many = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "hi"}] * 5})
    # Streamed: the output rule finds the term in the stream (an SSE error event, status 200).
    streamed_masked = orjson.dumps({**orjson.loads(masked), **STREAM_FIELDS})
    streamed_blocked = orjson.dumps({**orjson.loads(blocked_out), **STREAM_FIELDS})

    async def governed_exchanges() -> None:
        assert await client.exchange(masked) == 200
        assert await client.exchange(blocked_in) == 403
        assert await client.exchange(blocked_out) == 403
        assert await client.exchange(too_many) == 400
        assert await client.exchange(streamed_masked) == 200
        assert await client.exchange(streamed_blocked) == 200

    assert (await _served(node, governed_exchanges)).ours == []

    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)

        async def streamed_over_grpc() -> None:
            await _drained(stub.InferStream(chat("mail ada@example.org"), metadata=AUTH, timeout=10))
            with pytest.raises(grpc.aio.AioRpcError) as blocked:
                await _drained(stub.InferStream(chat("falcon"), metadata=AUTH, timeout=10))
            assert blocked.value.code() is grpc.StatusCode.PERMISSION_DENIED

        garbage = await _served(node, streamed_over_grpc)
        # grpc.aio's own cycle of an aborted call (above): its frames, none of the request.
        assert set(garbage.ours) <= {"Outcome", "frame InferService.InferStream", "frame abort"}, garbage.ours
        assert garbage.largest < 64 * 1024


async def test_a_rate_limit_refusal_leaves_no_cycles(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    # An air-gapped node's own ledger: one request a minute, so every request after the
    # first few (on credit, then the first lease) is refused with 429.
    pin = _limits_pin(
        tmp_path / "site.snapshot",
        signing_key,
        simulator.base_url,
        snapshot_pb2.Limits(requests_per_minute=1),
    )
    node = await _pinned(start_node, pin, tmp_path / "node")
    client = _Client(node)
    body = orjson.dumps(CHAT)

    async def refused_now() -> bool:
        return await client.exchange(body) == 429

    await eventually(refused_now, message="a 429")
    assert (await _served(node, lambda: _status(client, body, 429))).ours == []


async def test_a_key_scope_with_nothing_left_to_route_to_leaves_no_cycles(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    # Scoped to a model the policy never routes to: nothing left in scope for "auto".
    snap = snapshot(1, simulator.base_url)
    snap.api_keys[0].scopes.append("model:sim-secret")
    node = await start_node(http_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    client = _Client(node)
    body = orjson.dumps({**CHAT, "model": "auto"})
    assert (await _served(node, lambda: _status(client, body, 403))).ours == []
