"""Streams on a real node, read as a caller does: on gRPC and on the HTTP door."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from dataplane.app import DataPlaneNode
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, chat


async def refused_stream(
    stub: infer_pb2_grpc.InferServiceStub, correlation_id: str
) -> tuple[grpc.aio.AioRpcError, str]:
    """How a gRPC stream answering "go" ended (it must end in an error), and its text sent."""
    received: list[str] = []

    async def read() -> None:
        events = stub.InferStream(chat("go", correlation_id=correlation_id), metadata=AUTH, timeout=10)
        async for event in events:
            if event.WhichOneof("event") == "delta":
                received.append(event.delta.text)

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read()
    return ended.value, "".join(received)


async def streamed_over_http(node: DataPlaneNode, request_id: str, prompt: str = "go") -> str:
    """The whole SSE body of a streamed answer to ``prompt`` on the node's HTTP door."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{node.http_address}/v1/chat/completions",
            json={"model": "sim-fast", "stream": True, "messages": [{"role": "user", "content": prompt}]},
            headers={"authorization": f"Bearer {API_KEY}", "x-request-id": request_id},
        ) as response,
    ):
        return await response.text()
