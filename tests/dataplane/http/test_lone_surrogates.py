"""JSON text inside a request (a tool call's arguments, a tool's or an answer format's JSON
schema) that escapes half a UTF-16 surrogate pair (``\\ud800``) decodes to a string no UTF-8
encoder takes. Such a request is refused 400 naming the field, through either door and for
every provider: the adapters that send arguments as an object (Anthropic, Gemini, Ollama)
answered 500 when they encoded the upstream body. (The HTTP body's own JSON cannot carry
one: its parser refuses it. Text fields holding JSON can, escaped.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.edge.infer import parse_json
from dataplane.errors import InvalidRequest
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, snapshot

HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
LONE = '{"a": "\\ud800"}'  # JSON text whose string is a lone high surrogate
LONE_KEY = '{"\\udfff": 1}'  # a lone low surrogate, as a key
PAIRED = '{"a": "\\ud83d\\ude00"}'  # a whole pair: one emoji, valid


def _answered_call(arguments: str) -> dict[str, Any]:
    return {
        "model": "sim-fast",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
        ],
    }


@pytest.fixture(params=["anthropic", "gemini", "ollama", "simulated"])
async def node(
    request: pytest.FixtureRequest, start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> DataPlaneNode:
    # The upstream is never reached: the request is refused before anything is sent.
    node = await start_node(http_listen="127.0.0.1:0")
    snap = snapshot(1, simulator.base_url, provider_type=request.param)
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    return node


@pytest.fixture
async def http(node: DataPlaneNode) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://{node.http_address}") as session:
        yield session


@pytest.mark.parametrize("arguments", [LONE, LONE_KEY])
@pytest.mark.parametrize("stream", [False, True])
async def test_arguments_with_a_lone_surrogate_are_refused_naming_them(
    http: aiohttp.ClientSession, arguments: str, stream: bool
) -> None:
    body = {**_answered_call(arguments), "stream": stream}
    async with http.post("/v1/chat/completions", json=body, headers=HEADERS) as response:
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
    assert error["param"] == "messages[1].tool_calls[0].function.arguments"
    assert "surrogate" in error["message"]


async def test_a_whole_surrogate_pair_is_an_ordinary_character(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node(http_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    async with (
        aiohttp.ClientSession(f"http://{node.http_address}") as http,
        http.post("/v1/chat/completions", json=_answered_call(PAIRED), headers=HEADERS) as response,
    ):
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    "field",
    ["arguments_json", "parameters_json_schema", "response_format"],
)
async def test_the_grpc_door_refuses_them_too(node: DataPlaneNode, field: str) -> None:
    request = chat()
    where = ""
    if field == "arguments_json":
        answered = request.messages.add(role=infer_pb2.ROLE_ASSISTANT)
        answered.tool_calls.add(id="c1", name="f", arguments_json=LONE)
        request.messages.add(role=infer_pb2.ROLE_TOOL, tool_call_id="c1").content.add(text="r")
        where = "messages[1].tool_calls[0].arguments_json"
    elif field == "parameters_json_schema":
        request.tools.add(name="f", parameters_json_schema='{"type": "object", "enum": ["\\ud800"]}')
        where = "tools[0].parameters_json_schema"
    else:
        request.response_format.type = infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA
        request.response_format.schema_name = "answer"
        request.response_format.json_schema = '{"type": "string", "const": "\\udc00"}'
        where = "response_format.json_schema"
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Infer(request, metadata=AUTH)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert where in (refused.value.details() or "")
    assert "surrogate" in (refused.value.details() or "")


@pytest.mark.parametrize("text", [LONE, LONE_KEY, '{"a": "\ud800"}', '["\\uDBFF x"]'])
def test_parse_json_refuses_a_lone_surrogate_escaped_or_not(text: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_json(text, "tools[0].parameters_json_schema", "JSON schema")
    assert refused.value.field == "tools[0].parameters_json_schema"
    assert "surrogate" in str(refused.value)


def test_parse_json_takes_whole_pairs_and_big_integers() -> None:
    assert parse_json('{"a": "\\ud83d\\ude00", "n": 123456789012345678901234567890}', "f", "arguments") == {
        "a": "\U0001f600",
        "n": 123456789012345678901234567890,
    }
