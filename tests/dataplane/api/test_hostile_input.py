"""Hostile input over real gRPC: bytes that are no protobuf message, JSON nested a thousand
levels deep, non-finite numbers, megabyte names. Each gets a defined status with a bounded
message and one evidence record, nothing is logged with a traceback, and the node keeps
serving."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import AUTH, chat
from tests.helpers import eventually

Stub = infer_pb2_grpc.InferServiceStub
Metadata = tuple[tuple[str, str], ...]
SERVICE = "/signalbox.api.infer.v1.InferService/"
MAX_DETAILS = 2048


def _undecodable(case: str, embed: bool) -> bytes:
    """A request that is not a valid InferRequest (or EmbedRequest, for ``embed``)."""
    valid = (
        infer_pb2.EmbedRequest(model="sim-embed", inputs=["x"]) if embed else chat("hello")
    ).SerializeToString()
    metadata, correlation = (b"\x32", b"\x3a") if embed else (b"\x52", b"\x5a")  # fields 6/10 and 7/11
    return {
        "bad UTF-8 in a string field": b"\x0a\x02\xff\xfe" + valid,  # model (field 1)
        "bad UTF-8 in a map value": valid + metadata + b"\x07\x0a\x01k\x12\x02\xff\xfe",
        "bad UTF-8 in a map key": valid + metadata + b"\x07\x0a\x02\xc3\x28\x12\x01v",
        "truncated": valid + correlation + b"\x10only-six",  # claims 16 bytes, has 8
    }[case]


UNDECODABLE = {
    "bad UTF-8 in a string field": "String field had bad UTF-8",
    "bad UTF-8 in a map value": "String field had bad UTF-8",
    "bad UTF-8 in a map key": "String field had bad UTF-8",
    "truncated": "Wire format was corrupt",
}


@pytest.fixture
async def channel(serving_node: DataPlaneNode) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(serving_node.address) as channel:
        yield channel


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    return list(read_records(log_path(tmp_path / "node", "node-test")))


async def _one_record(tmp_path: Path, correlation_id: str) -> dict[str, Any]:
    def mine() -> dict[str, Any]:
        found = [r for r in _records(tmp_path) if r["correlation_id"] == correlation_id]
        assert len(found) == 1, found
        return found[0]

    return await eventually(mine, message=f"one evidence record for {correlation_id}")


async def _raw_stream(channel: grpc.aio.Channel, data: bytes, metadata: Metadata) -> None:
    stream = channel.unary_stream(
        SERVICE + "InferStream",
        request_serializer=None,
        response_deserializer=infer_pb2.InferStreamEvent.FromString,
    )
    async for _ in stream(data, metadata=metadata, timeout=10):
        pass


async def _raw_unary(channel: grpc.aio.Channel, method: str, data: bytes, metadata: Metadata) -> None:
    reply = infer_pb2.EmbedResponse if method == "Embed" else infer_pb2.InferResponse
    unary = channel.unary_unary(
        SERVICE + method, request_serializer=None, response_deserializer=reply.FromString
    )
    await unary(data, metadata=metadata, timeout=10)


async def _raw_call(channel: grpc.aio.Channel, method: str, data: bytes, cid: str) -> grpc.aio.AioRpcError:
    """Send ``data`` as the request of ``method`` as it is, not serialized by a stub."""
    metadata = (*AUTH, ("x-correlation-id", cid))
    call = (
        _raw_stream(channel, data, metadata)
        if method == "InferStream"
        else _raw_unary(channel, method, data, metadata)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


@pytest.mark.parametrize("method", ["Infer", "InferStream", "Embed"])
@pytest.mark.parametrize("case", list(UNDECODABLE))
async def test_undecodable_bytes_are_invalid_argument_with_evidence_and_one_log_line(
    method: str,
    case: str,
    channel: grpc.aio.Channel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data, problem = _undecodable(case, embed=method == "Embed"), UNDECODABLE[case]
    message_type = "EmbedRequest" if method == "Embed" else "InferRequest"
    cid = f"cid-{method}-{case.replace(' ', '-')}"
    caplog.set_level(logging.INFO)
    error = await _raw_call(channel, method, data, cid)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert (
        details
        == f"request: not a valid signalbox.api.infer.v1.{message_type}: {problem} (correlation id {cid})"
    )
    assert ("x-correlation-id", cid) in tuple(error.trailing_metadata() or ())

    record = await _one_record(tmp_path, cid)
    assert record["outcome"]["code"] == "INVALID_ARGUMENT"
    assert record["outcome"]["message"].startswith("request: not a valid")
    assert record["api_key_id"] == "k-acme"
    assert record["request_sha256"] == hashlib.sha256(data).hexdigest()

    refusals = [r for r in caplog.records if r.name == "signalbox.dataplane.api"]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert message_type in refusals[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "nothing is logged with a traceback"

    stub = infer_pb2_grpc.InferServiceStub(channel)
    assert (await stub.Infer(chat("still there?"), metadata=AUTH, timeout=10)).message.content[0].text


async def test_undecodable_bytes_from_an_anonymous_caller_are_unauthenticated(
    channel: grpc.aio.Channel,
) -> None:
    unary = channel.unary_unary(
        SERVICE + "Infer", request_serializer=None, response_deserializer=infer_pb2.InferResponse.FromString
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(_undecodable("bad UTF-8 in a string field", embed=False), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def _deep(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def _tool_schema(schema: str) -> infer_pb2.InferRequest:
    request = chat()
    request.tools.add(name="lookup", parameters_json_schema=schema)
    return request


def _response_schema(schema: str) -> infer_pb2.InferRequest:
    request = chat()
    request.response_format.type = infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA
    request.response_format.json_schema = schema
    return request


def _tool_arguments(arguments: str) -> infer_pb2.InferRequest:
    request = chat()
    request.messages.add(role=infer_pb2.ROLE_ASSISTANT).tool_calls.add(
        id="c1", name="lookup", arguments_json=arguments
    )
    return request


def _tool_choice_named(name: str) -> infer_pb2.InferRequest:
    request = _tool_schema('{"type": "object"}')
    request.tool_choice.mode = infer_pb2.ToolChoice.MODE_TOOL
    request.tool_choice.tool_name = name
    return request


HUGE = "m" * (1024 * 1024)

HOSTILE = {
    "tool schema 1,000 levels deep": (
        lambda: _tool_schema(_deep(1_000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0].parameters_json_schema: JSON schema is nested deeper than the limit of 64 levels",
    ),
    "response schema 1,000 levels deep": (
        lambda: _response_schema(_deep(1_000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "response_format.json_schema: JSON schema is nested deeper than the limit of 64 levels",
    ),
    "tool-call arguments 1,000 levels deep": (
        lambda: _tool_arguments(_deep(1_000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[1].tool_calls[0].arguments_json: arguments is nested deeper than the limit of 64 levels",
    ),
    "NaN in a tool schema": (
        lambda: _tool_schema('{"type": "number", "minimum": NaN}'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0].parameters_json_schema: JSON schema contains the non-finite number 'NaN'",
    ),
    "Infinity in a tool schema": (
        lambda: _tool_schema('{"type": "number", "maximum": Infinity}'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0].parameters_json_schema: JSON schema contains the non-finite number 'Infinity'",
    ),
    "1e999999 in a tool schema": (
        lambda: _tool_schema('{"type": "number", "maximum": 1e999999}'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0].parameters_json_schema: JSON schema contains the non-finite number '1e999999'",
    ),
    "-Infinity in a response schema": (
        lambda: _response_schema('{"type": "number", "minimum": -Infinity}'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "response_format.json_schema: JSON schema contains the non-finite number '-Infinity'",
    ),
    "1 MiB model name": (
        lambda: chat(model=HUGE),
        grpc.StatusCode.NOT_FOUND,
        "model: unknown model '" + "m" * 64 + "'...",
    ),
    "1 MiB tool_choice name": (
        lambda: _tool_choice_named(HUGE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tool_choice.tool_name: no tool named '" + "m" * 64 + "'... in tools",
    ),
    "1 MiB tool name": (
        lambda: _named_tool(HUGE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0].name: must be 1-64 letters",
    ),
    "1 MiB correlation id": (
        lambda: chat(correlation_id=HUGE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "correlation_id: must be 1-128 printable ASCII characters",
    ),
    # Found by the fuzz suite: "$" also matched before a trailing newline, so the id was
    # accepted and echoed in the trailers, which gRPC refused (INTERNAL "Invalid metadata").
    "correlation id with a trailing newline": (
        lambda: chat(correlation_id="0\n"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "correlation_id: must be 1-128 printable ASCII characters",
    ),
    "tool name with a trailing newline": (
        lambda: _named_tool("lookup\n"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0].name: must be 1-64 letters",
    ),
}


def _named_tool(name: str) -> infer_pb2.InferRequest:
    request = chat()
    request.tools.add(name=name, parameters_json_schema='{"type": "object"}')
    return request


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_fields_get_a_defined_status_with_a_bounded_message(
    case: str, channel: grpc.aio.Channel
) -> None:
    make, code, fragment = HOSTILE[case]
    stub = infer_pb2_grpc.InferServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(make(), metadata=AUTH, timeout=10)
    details = info.value.details() or ""
    assert info.value.code() is code, details[:300]
    assert details.startswith(fragment), details[:300]
    assert len(details.encode()) < MAX_DETAILS
    assert (await stub.Infer(chat("still there?"), metadata=AUTH, timeout=10)).message.content[0].text


async def test_a_request_whose_upstream_body_is_over_a_mebibyte_is_served(channel: grpc.aio.Channel) -> None:
    """Found by the fuzz suite: aiohttp warned about raw request bodies of 1 MiB or more (here
    three inputs of 100,000 four-byte characters: 1.2 MB of body, 75,000 tokens),
    which failed such requests as INTERNAL wherever warnings are errors."""
    stub = infer_pb2_grpc.InferServiceStub(channel)
    embedded = await stub.Embed(
        infer_pb2.EmbedRequest(model="sim-embed", inputs=["\U0001f600" * 100_000] * 3),
        metadata=AUTH,
        timeout=10,
    )
    assert len(embedded.embeddings) == 3
