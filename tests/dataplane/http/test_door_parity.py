"""What one door refuses by name, the other does not silently drop: a field a gRPC caller set
that nothing sends on is refused naming it, as the HTTP door refuses its equivalent, before
any upstream call. (What both doors send on alike: ``test_openai_sdk``'s
``recorded_alike`` and ``test_schema_description``.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, snapshot

RF = infer_pb2.ResponseFormat
SCHEMA = '{"type": "object"}'
CAPABLE = (common_pb2.CAPABILITY_VISION, common_pb2.CAPABILITY_JSON_MODE, common_pb2.CAPABILITY_JSON_SCHEMA)


@dataclass(frozen=True)
class Case:
    grpc: Callable[[infer_pb2.InferRequest], None]
    """Sets the field on a plain gRPC request (one user message)."""
    grpc_says: str
    """The start of the gRPC refusal's details: the field, the rule."""
    http: dict[str, Any] | None
    """The HTTP body's fields asking the same, None where the HTTP door cannot say it."""
    http_param: str = ""


def _format(kind: RF.Type.ValueType, **fields: Any) -> Callable[[infer_pb2.InferRequest], None]:
    def set_it(request: infer_pb2.InferRequest) -> None:
        request.response_format.CopyFrom(RF(type=kind, **fields))

    return set_it


CASES = {
    "a schema without its type": Case(
        _format(RF.TYPE_UNSPECIFIED, json_schema=SCHEMA),
        "response_format.json_schema: only allowed when type is JSON_SCHEMA",
        {"response_format": {"type": "text", "json_schema": {"name": "p", "schema": {"type": "object"}}}},
        "response_format.json_schema",
    ),
    "a schema name with JSON_OBJECT": Case(
        _format(RF.TYPE_JSON_OBJECT, schema_name="p"),
        "response_format.schema_name: only allowed when type is JSON_SCHEMA",
        {"response_format": {"type": "json_object", "json_schema": {"name": "p"}}},
        "response_format.json_schema",
    ),
    "strict with TEXT": Case(
        _format(RF.TYPE_TEXT, strict=True),
        "response_format.strict: only allowed when type is JSON_SCHEMA",
        {"response_format": {"type": "text", "json_schema": {"strict": True}}},
        "response_format.json_schema",
    ),
}


IMAGE = [
    {"type": "text", "text": "see"},
    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
]


def _image_in(role: str, **fields: str) -> Case:
    """An image in a ``role`` message (with ``fields``) between two user messages."""

    def set_it(request: infer_pb2.InferRequest) -> None:
        message = request.messages.add(role=infer_pb2.Role.Value(f"ROLE_{role.upper()}"), **fields)
        message.content.add(text="see")
        message.content.add(image=infer_pb2.ImagePart(url="https://example.com/a.png"))
        request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="and?")

    messages = [
        {"role": "user", "content": "hello"},
        {"role": role, "content": IMAGE, **fields},
        {"role": "user", "content": "and?"},
    ]
    return Case(
        set_it,
        "messages[1].content[1].image: images are allowed in user messages only",
        {"messages": messages},
        "messages[1].content[1].type",
    )


CASES |= {
    "an image in a system message": _image_in("system"),
    "an image in an assistant message": _image_in("assistant"),
    "an image in a tool message": _image_in("tool", tool_call_id="c1"),
}


def _answering(role: str) -> Case:
    """A ``role`` message that says which tool call it answers, as only a tool's does."""

    def set_it(request: infer_pb2.InferRequest) -> None:
        message = request.messages.add(role=infer_pb2.Role.Value(f"ROLE_{role.upper()}"), tool_call_id="c1")
        message.content.add(text="said")

    return Case(
        set_it,
        "messages[1].tool_call_id: only tool messages answer a tool call",
        {
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": role, "content": "said", "tool_call_id": "c1"},
            ]
        },
        "messages[1].tool_call_id",
    )


CASES |= {
    "a tool call id on a user message": _answering("user"),
    "a tool call id on an assistant message": _answering("assistant"),
}


def _choosing(mode: infer_pb2.ToolChoice.Mode.ValueType) -> Case:
    """A tool named in a tool choice of ``mode`` (the HTTP door names one only as a choice)."""

    def set_it(request: infer_pb2.InferRequest) -> None:
        request.tools.add(name="lookup", parameters_json_schema=SCHEMA)
        request.tool_choice.CopyFrom(infer_pb2.ToolChoice(mode=mode, tool_name="lookup"))

    return Case(set_it, "tool_choice.tool_name: only allowed when mode is TOOL", None)


CASES |= {
    "a tool name without its mode": _choosing(infer_pb2.ToolChoice.MODE_UNSPECIFIED),
    "a tool name with NONE": _choosing(infer_pb2.ToolChoice.MODE_NONE),
}


@pytest.fixture
async def node(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    """A node whose sim-fast can do all each case asks of it but for the field refused, so
    that, taken, the request would be served."""
    node = await start_node(http_listen="127.0.0.1:0")
    snap = snapshot(1, simulator.base_url)
    for model in snap.models:
        if model.alias == "sim-fast":
            model.capabilities.extend(CAPABLE)
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    return node


@pytest.fixture
async def stub(node: DataPlaneNode) -> AsyncIterator[infer_pb2_grpc.InferServiceStub]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        yield infer_pb2_grpc.InferServiceStub(channel)


@pytest.mark.parametrize("case", list(CASES))
async def test_what_the_http_door_refuses_grpc_refuses_naming_the_field(
    case: str,
    stub: infer_pb2_grpc.InferServiceStub,
    http: aiohttp.ClientSession,
    simulator: Any,
) -> None:
    # Taken and dropped unread, each was served as if the caller had not asked for it.
    it = CASES[case]
    request = chat("hello", model="sim-fast")
    it.grpc(request)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Infer(request, metadata=AUTH, timeout=10)
    details = refused.value.details() or ""
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(it.grpc_says), details
    if it.http is not None:
        body = {"model": "sim-fast", "messages": [{"role": "user", "content": "hello"}], **it.http}
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with http.post("/v1/chat/completions", json=body, headers=headers) as response:
            answer = await response.json()
        assert response.status == 400, answer
        assert answer["error"]["param"] == it.http_param
    assert simulator.stats("sim-fast").total == 0


@pytest.mark.parametrize(
    ("task", "model"),
    [
        # HTTP trims a header's value (x-signalbox-task); gRPC took InferRequest.task as sent,
        # so " summarize " matched a policy's `tasks: [summarize]` through one door and fell to
        # the default route through the other.
        (" summarize\t", ""),
        # The HTTP door reads model "auto" as the policy's choice (how an OpenAI client says
        # so); through gRPC it was looked up as a model alias and refused NOT_FOUND.
        ("summarize", "auto"),
    ],
    ids=["task with spaces", "model auto"],
)
async def test_the_policy_routes_alike_through_both_doors(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, task: str, model: str
) -> None:
    node = await start_node(http_listen="127.0.0.1:0")
    rule = {"name": "summaries", "match": {"tasks": ["summarize"]}, "models": ["sim-smart"]}
    assert (
        await node.store.apply(envelope(snapshot(1, simulator.base_url, rules=[rule]), signing_key))
    ).accepted
    request = chat("hello", task=task)
    request.model = model
    async with grpc.aio.insecure_channel(node.address) as channel:
        answer = await infer_pb2_grpc.InferServiceStub(channel).Infer(request, metadata=AUTH, timeout=10)
    assert (answer.model, answer.routing.rule) == ("sim-smart", "summaries")
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    headers = {"authorization": f"Bearer {API_KEY}", "x-signalbox-task": "summarize"}
    async with (
        aiohttp.ClientSession(f"http://{node.http_address}") as http,
        http.post("/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        assert (await response.json())["model"] == "sim-smart"
