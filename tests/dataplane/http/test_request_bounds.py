"""Bounded work per request, on both doors: counts that have no use at their size are refused
by name before the request is converted, and a request at every limit is served."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, chat, envelope, snapshot
from tests.helpers import eventually

HEADERS = {"authorization": f"Bearer {API_KEY}"}
MAX_STOP = 4
"""OpenAI's documented limit of stop sequences."""


@pytest.fixture
async def stub(node: DataPlaneNode) -> AsyncIterator[infer_pb2_grpc.InferServiceStub]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        yield infer_pb2_grpc.InferServiceStub(channel)


async def _post(http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    # As a stream: aiohttp warns (an error here) about a megabyte body given as bytes.
    data = io.BytesIO(orjson.dumps(body))
    async with http.post("/v1/chat/completions", data=data, headers=HEADERS) as response:
        return response.status, await response.json()


async def _post_bytes(http: aiohttp.ClientSession, body: bytes) -> tuple[int, dict[str, Any], float]:
    """The answer to ``body``, and the CPU seconds of this process (node, simulator and
    client) meanwhile."""
    began = time.process_time()
    async with http.post("/v1/chat/completions", data=io.BytesIO(body), headers=HEADERS) as response:
        answer = await response.json()
    return response.status, answer, time.process_time() - began


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


MAX_MESSAGES, MAX_PARTS, MAX_CALLS = 2048, 8192, 8192


def _conversation(messages: int, parts: int = 1, calls: int = 0) -> list[dict[str, Any]]:
    """``messages`` messages (user, assistant, ...), each of ``parts`` text parts; each
    assistant message also with ``calls`` tool calls."""
    out: list[dict[str, Any]] = []
    while len(out) < messages - 1:
        out.append({"role": "user", "content": [{"type": "text", "text": "u"}] * parts})
        assistant: dict[str, Any] = {"role": "assistant", "content": [{"type": "text", "text": "a"}] * parts}
        if calls:
            assistant["tool_calls"] = [
                {"id": f"c{j}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                for j in range(calls)
            ]
        out.append(assistant)
    out.append({"role": "user", "content": [{"type": "text", "text": "u"}] * parts})
    return out[-messages:] if len(out) > messages else out


def _grpc_conversation(messages: int, parts: int = 1, calls: int = 0) -> infer_pb2.InferRequest:
    request = infer_pb2.InferRequest(model="sim-fast")
    for message in _conversation(messages, parts, calls):
        role = infer_pb2.ROLE_USER if message["role"] == "user" else infer_pb2.ROLE_ASSISTANT
        out = request.messages.add(role=role)
        for part in message["content"]:
            out.content.add(text=part["text"])
        for call in message.get("tool_calls", ()):
            out.tool_calls.add(id=call["id"], name="f", arguments_json="{}")
    return request


async def test_a_flood_of_messages_parts_or_tool_calls_is_refused_by_name_on_both_doors(
    http: aiohttp.ClientSession, stub: infer_pb2_grpc.InferServiceStub
) -> None:
    # 540,000 one-word messages (16 MB) were parsed, converted, validated and estimated on
    # the event loop: about 10 s in which the worker answered no one else.
    # Now refused before the parse: half a million messages are more objects than a body may
    # hold (test_a_body_of_millions_of_tiny_json_containers_...); 100,000 are parsed and counted.
    flood = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}] * 540_000}
    status, answer = await _post(http, flood)
    assert status == 400, answer
    assert answer["error"]["param"] == "body"
    flood["messages"] = flood["messages"][:100_000]
    status, answer = await _post(http, flood)
    assert status == 400, answer
    assert answer["error"]["param"] == "messages"
    assert f"100000 messages, more than the limit of {MAX_MESSAGES}" in answer["error"]["message"]
    cases = [
        (_conversation(MAX_MESSAGES + 1), "messages"),
        (_conversation(3, parts=MAX_PARTS // 2), "messages[2].content"),
        (_conversation(5, calls=MAX_CALLS // 2 + 1), "messages[3].tool_calls"),
    ]
    for messages, field in cases:
        status, answer = await _post(http, {"model": "sim-fast", "messages": messages})
        assert status == 400, (field, answer)
        assert answer["error"]["param"] == field
        assert "more than the limit of" in answer["error"]["message"]
    grpc_cases = [
        (_grpc_conversation(1), "messages"),
        (_grpc_conversation(3, parts=MAX_PARTS // 2), "messages[2].content"),
        (_grpc_conversation(5, calls=MAX_CALLS // 2 + 1), "messages[3].tool_calls"),
    ]
    for _ in range(540_000 - 1):
        grpc_cases[0][0].messages.add(role=infer_pb2.ROLE_USER).content.add(text="hi")
    for request, field in grpc_cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(request, metadata=AUTH, timeout=30)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert (info.value.details() or "").startswith(f"{field}: "), info.value.details()


async def test_a_request_at_every_count_limit_is_served_on_both_doors(
    http: aiohttp.ClientSession, stub: infer_pb2_grpc.InferServiceStub
) -> None:
    # Every message at its limit: 2,048 messages, 8,192 content parts and tool calls.
    per_message = MAX_PARTS // MAX_MESSAGES
    calls = MAX_CALLS // (MAX_MESSAGES // 2)
    messages = _conversation(MAX_MESSAGES, parts=per_message, calls=calls)
    assert len(messages) == MAX_MESSAGES
    assert sum(len(m.get("tool_calls", ())) for m in messages) == MAX_CALLS
    status, answer = await _post(
        http,
        {"model": "sim-fast", "messages": messages, "stop": ["a", "b", "c", "d"],
         "tools": [_tool(f"t{i}") for i in range(128)]},
    )  # fmt: skip
    assert status == 200, answer
    request = _grpc_conversation(MAX_MESSAGES, parts=per_message, calls=calls)
    for i in range(128):
        request.tools.add(name=f"t{i}", parameters_json_schema='{"type": "object"}')
    assert (await stub.Infer(request, metadata=AUTH, timeout=30)).message.content[0].text


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


@contextlib.asynccontextmanager
async def _expecting(
    node: DataPlaneNode, key: bytes | None, length: int
) -> AsyncIterator[tuple[bytes, asyncio.StreamReader]]:
    """Headers of a chat request waiting for ``100 Continue`` (a body of ``length`` bytes);
    the head of the node's first answer, and the reader to read on."""
    host, port = node.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        auth = b"Authorization: Bearer %b\r\n" % key if key is not None else b""
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%bContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (auth, length)
        )
        await writer.drain()
        yield await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10), reader
    finally:
        writer.close()


@pytest.mark.parametrize("key", [b"sk-test-wrong-0123456789", None], ids=["bad key", "no key"])
async def test_a_request_waiting_for_100_continue_with_refused_credentials_gets_its_401_at_once(
    node: DataPlaneNode, key: bytes | None
) -> None:
    # The node answered 100 Continue to anyone, then read up to 16 MB before the 401.
    async with _expecting(node, key, 15 * 1024 * 1024) as (head, reader):
        assert head.startswith(b"HTTP/1.1 401 "), head
        assert b"connection: close" in head.lower()
        assert b"x-evidence-id: " in head  # answered by the pipeline: with its ids and record
        length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        error = json.loads(await reader.readexactly(length))["error"]
        assert error["code"] == "invalid_api_key"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed: the body is never read


async def test_a_request_waiting_for_100_continue_with_good_credentials_gets_it(
    node: DataPlaneNode,
) -> None:
    async with _expecting(node, API_KEY.encode(), 100) as (head, _):
        assert head == b"HTTP/1.1 100 Continue\r\n\r\n"
    async with _expecting(node, API_KEY.encode(), 17 * 1024 * 1024) as (head, _):
        assert head.startswith(b"HTTP/1.1 413 "), head


def _image(**fields: Any) -> infer_pb2.InferRequest:
    request = chat("what is this?")
    request.messages[0].content.add(image=infer_pb2.ImagePart(**fields))
    return request


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"url": "data:image/png;base64,"}, "url", "holds no image data"),
        ({"url": "data:image/png;base64,@@@"}, "url", "not valid base64"),
        ({"url": "data:text/plain;base64,aGk="}, "url", "data:image/<type>;base64,<data>"),
        ({"url": "file:///etc/passwd"}, "url", "http(s) URL"),
        ({"url": "https://example.com/a.png", "detail": "ultra"}, "detail", "low, high or original"),
        ({"data": b"\x89PNG", "media_type": "text/html"}, "media_type", "image type"),
        ({"data": b"\x89PNG", "media_type": "image/png", "detail": "x"}, "detail", "or original"),
    ],
    ids=[
        "empty data URL",
        "bad base64",
        "not an image",
        "file URL",
        "url detail",
        "media type",
        "data detail",
    ],
)
async def test_grpc_refuses_the_images_the_http_door_refuses_naming_the_field(
    stub: infer_pb2_grpc.InferServiceStub, fields: dict[str, Any], field: str, says: str
) -> None:
    # Taken and sent on, each came back as the provider's 400, which names no field (the
    # HTTP door refused them by name).
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(_image(**fields), metadata=AUTH, timeout=10)
    details = info.value.details() or ""
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"messages[0].content[1].image.{field}: "), details
    assert says in details


async def test_an_anonymous_callers_body_is_not_parsed_before_its_401(
    http: aiohttp.ClientSession, node: DataPlaneNode
) -> None:
    # A body naming "stream" was parsed before the pipeline, to see whether it streams,
    # whoever sent it: 16 MB of tiny arrays cost an anonymous caller seconds of the node's
    # event loop for each 401. Unparsed, the refusal is recorded as a whole answer's.
    body = b'{"model": "sim-fast", "stream": true, "messages": [], "x": [' + b"[]," * 100_000 + b"[]]}"
    wrong = {"authorization": "Bearer sk-test-wrong-0123456789"}
    async with http.post("/v1/chat/completions", data=io.BytesIO(body), headers=wrong) as response:
        assert response.status == 401
        evidence_id = response.headers["x-evidence-id"]
    path = log_path(node.settings.data_dir, node.settings.node_id)

    def kind() -> str:
        return next((r["kind"] for r in read_records(path) if r["record_id"] == evidence_id), "")

    assert await eventually(kind) == "infer"
    # A caller whose key passes still has its body read to see that it streams.
    streamed = _chat_body(stream=True)
    async with http.post("/v1/chat/completions", json=streamed, headers=HEADERS) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({f"k{i}": "v" for i in range(100_000)}, "metadata: at most 16 pairs"),
        ({"k" * 65: "v"}, "metadata: keys are at most 64 characters"),
        ({"k": "v" * 513}, "metadata.'k': at most 512 characters"),
    ],
    ids=["pairs", "key", "value"],
)
async def test_grpc_limits_metadata_as_the_http_door_does(
    stub: infer_pb2_grpc.InferServiceStub, http: aiohttp.ClientSession, metadata: dict[str, str], says: str
) -> None:
    # gRPC took any number of pairs of any size (the HTTP door refuses past 16).
    for call, request in (
        (stub.Infer, chat(metadata=metadata)),
        (stub.Embed, infer_pb2.EmbedRequest(model="sim-embed", inputs=["x"], metadata=metadata)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, metadata=AUTH, timeout=10)  # type: ignore[operator]
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert (info.value.details() or "").startswith(says), info.value.details()
    status, answer = await _post(http, _chat_body(metadata=metadata))
    assert status == 400
    assert answer["error"]["message"].startswith(says)
    most = {f"k{i}": "v" * 512 for i in range(16)}
    assert (await stub.Infer(chat(metadata=most), metadata=AUTH, timeout=10)).message.content[0].text


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ('{"a": ' * 30_000 + "1" + "}" * 30_000, "nested deeper than the limit of 64 levels"),
        ('"just text"', "must be a JSON object"),
        ('{"a": NaN}', "non-finite number"),
        ('{"a": "' + "x" * 300_000 + '"}', "more than the limit of"),
    ],
    ids=["deep", "not an object", "NaN", "huge"],
)
async def test_the_http_door_reads_tool_call_arguments_as_grpc_does(
    http: aiohttp.ClientSession, arguments: str, says: str
) -> None:
    # Unread, they were sent on: an adapter that takes them as an object (Anthropic) hit a
    # RecursionError on the deep ones, a 500 for the caller's mistake.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    status, answer = await _post(http, {"model": "sim-fast", "messages": messages})
    assert status == 400, answer
    assert answer["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    assert says in answer["error"]["message"]
    call["function"]["arguments"] = '{"city": "Paris"}'  # type: ignore[index]
    status, answer = await _post(http, {"model": "sim-fast", "messages": messages})
    assert status == 200, answer


MAX_CONTAINERS = 200_000
BODY_LIMIT = 16 * 1024 * 1024


def _filled(head: bytes, unit: bytes, tail: bytes) -> bytes:
    """``head``, then ``unit`` comma-separated as often as fits a body of the node's limit,
    then ``tail``."""
    count = (BODY_LIMIT - len(head) - len(tail)) // (len(unit) + 1)
    return head + b",".join([unit] * count) + tail


@pytest.fixture
async def roomy(node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey) -> None:
    """sim-fast sees images and has room for a large request (a context window of 10M)."""
    roomy = snapshot(2, simulator.base_url)
    model = next(m for m in roomy.models if m.alias == "sim-fast")
    model.capabilities.append(common_pb2.CAPABILITY_VISION)
    model.context_window = 10_000_000
    assert (await node.store.apply(envelope(roomy, signing_key))).accepted


@pytest.mark.usefixtures("roomy")
async def test_a_body_of_millions_of_tiny_json_containers_is_refused_before_it_is_parsed(
    http: aiohttp.ClientSession,
) -> None:
    # 16 MB of empty arrays, or of arrays nested 60 deep (legal), in a key the door ignored:
    # parsed and walked, each cost the worker 2 to 5 s of CPU holding the GIL, then served.
    head = b'{"model": "sim-fast", "messages": [{"role": "user", "content": "hi", "x": ['
    image = base64.b64encode(bytes(BODY_LIMIT * 3 // 4 - 300)).decode()
    legitimate = orjson.dumps(
        {"model": "sim-fast", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]}]}
    )  # fmt: skip
    assert BODY_LIMIT - 1000 < len(legitimate) <= BODY_LIMIT
    status, answer, served_cpu = await _post_bytes(http, legitimate)
    assert status == 200, answer
    for unit in (b"[]", b"{}", b"[" * 60 + b"]" * 60):
        hostile = _filled(head, unit, b"]}]}")
        status, answer, cpu = await _post_bytes(http, hostile)
        assert status == 400, answer
        assert answer["error"]["param"] == "body"
        says = f"holds more than the limit of {MAX_CONTAINERS} JSON objects and arrays"
        assert says in answer["error"]["message"]
        # Refused for less than the legitimate body of the same size costs to serve (with
        # room for a busy machine's noise): the parse alone took seconds.
        assert cpu < max(2 * served_cpu, 1.0), (unit[:4], cpu, served_cpu)


@pytest.mark.usefixtures("roomy")
async def test_a_body_at_the_container_limit_or_with_brackets_in_its_strings_is_served(
    http: aiohttp.ClientSession,
) -> None:
    # The limit counts objects and arrays, not brackets: JSON or code sent as text (each
    # bracket escaped or not, after escaped quotes and backslashes) is served.
    text = '[{"\\' * 110_000  # as sent: [{\"\\
    body = orjson.dumps({"model": "sim-fast", "messages": [{"role": "user", "content": text}]})
    assert body.count(b"[") + body.count(b"{") > MAX_CONTAINERS
    status, answer, _ = await _post_bytes(http, body)
    assert status == 200, answer
    # Exactly at the limit (in a tool's schema, which the door reads), and one past it.
    schema = {"type": "object", "properties": {"p": {"type": "array", "items": {}}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    plain = orjson.dumps(_chat_body(tools=[tool]))
    have = plain.count(b"[") + plain.count(b"{") + 1  # and the enum's array
    for extra, expected in ((0, 200), (1, 400)):
        enum = b",".join([b"[]"] * (MAX_CONTAINERS - have + extra))
        body = plain.replace(b'"items":{}', b'"items":{},"enum":[' + enum + b"]")
        status, answer, _ = await _post_bytes(http, body)
        assert status == expected, (extra, answer)
    assert "JSON objects and arrays" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value", "path", "bounds"),
    [
        ("max_tokens", 2**63, "/v1/chat/completions", "[0, 4294967295]"),
        ("max_completion_tokens", 2**32, "/v1/chat/completions", "[0, 4294967295]"),
        ("max_tokens", -1, "/v1/chat/completions", "[0, 4294967295]"),
        ("seed", 2**63, "/v1/chat/completions", "[-9223372036854775808, 9223372036854775807]"),
        ("seed", 2**64 - 1, "/v1/chat/completions", "[-9223372036854775808, 9223372036854775807]"),
        ("dimensions", 2**32, "/v1/embeddings", "[0, 4294967295]"),
    ],
)
async def test_integers_beyond_their_grpc_types_are_refused_by_name(
    http: aiohttp.ClientSession, field: str, value: int, path: str, bounds: str
) -> None:
    # What the gRPC door's types cannot carry (uint32 max_output_tokens and dimensions, int64
    # seed) the HTTP door refuses by name too: a huge max_tokens was refused for the context
    # window (422, no field), a seed past int64 was sent on for the upstream to refuse, and a
    # huge dimensions came back as the upstream's unnamed 400.
    if path == "/v1/embeddings":
        body: dict[str, Any] = {"model": "sim-embed", "input": "x", field: value}
    else:
        body = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}], field: value}
    async with http.post(path, data=orjson.dumps(body), headers=HEADERS) as response:
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
    assert error["param"] == field
    assert error["message"].startswith(f"{field}: must be an integer in {bounds} (request id ")


async def test_integers_at_the_ends_of_their_grpc_types_are_taken(http: aiohttp.ClientSession) -> None:
    for seed in (-(2**63), 2**63 - 1):
        body = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}], "seed": seed}
        async with http.post("/v1/chat/completions", json=body, headers=HEADERS) as response:
            assert response.status == 200, await response.text()
