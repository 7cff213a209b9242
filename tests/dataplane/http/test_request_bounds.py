"""Bounded work per request, on both doors: counts that have no use at their size are refused
by name before the request is converted, and a request at every limit is served."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, snapshot

HEADERS = {"authorization": f"Bearer {API_KEY}"}
MAX_STOP = 4
"""OpenAI's documented limit of stop sequences."""


@pytest.fixture
async def node(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    node = await start_node(http_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    return node


@pytest.fixture
async def http(node: DataPlaneNode) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://{node.http_address}") as session:
        yield session


@pytest.fixture
async def stub(node: DataPlaneNode) -> AsyncIterator[infer_pb2_grpc.InferServiceStub]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        yield infer_pb2_grpc.InferServiceStub(channel)


async def _post(http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    # As a stream: aiohttp warns (an error here) about a megabyte body given as bytes.
    data = io.BytesIO(orjson.dumps(body))
    async with http.post("/v1/chat/completions", data=data, headers=HEADERS) as response:
        return response.status, await response.json()


def _chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "sim-fast", "messages": [{"role": "user", "content": "hello"}], **fields}


async def test_more_stop_sequences_than_openai_takes_are_refused_by_name_on_both_doors(
    http: aiohttp.ClientSession, stub: infer_pb2_grpc.InferServiceStub
) -> None:
    # 16 were taken and sent on: OpenAI (4) and Gemini (5) answered 400 naming no field.
    status, answer = await _post(http, _chat_body(stop=[f"s{i}" for i in range(MAX_STOP + 1)]))
    assert status == 400, answer
    assert answer["error"]["param"] == "stop"
    assert f"more than the limit of {MAX_STOP}" in answer["error"]["message"]
    status, answer = await _post(http, _chat_body(stop=["x"] * 1_000_000))
    assert status == 400, answer
    assert answer["error"]["param"] == "stop"

    request = chat()
    request.params.stop.extend(f"s{i}" for i in range(MAX_STOP + 1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request, metadata=AUTH, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("params.stop: ")

    status, answer = await _post(http, _chat_body(stop=[f"s{i}" for i in range(MAX_STOP)]))
    assert status == 200, answer
    request = chat()
    request.params.stop.extend(f"s{i}" for i in range(MAX_STOP))
    assert (await stub.Infer(request, metadata=AUTH, timeout=10)).message.content[0].text
