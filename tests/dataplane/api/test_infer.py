"""The Infer API over real gRPC: answers, and a precise status for every kind of bad input,
after which the node keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Behaviour
from tests.dataplane.conftest import (
    API_KEY,
    AUTH,
    EXPIRED_KEY,
    INACTIVE_KEY,
    NodeFactory,
    chat,
    envelope,
    snapshot,
)
from tests.helpers import eventually

Stub = infer_pb2_grpc.InferServiceStub


def _with(**params: Any) -> infer_pb2.InferRequest:
    request = chat()
    for name, value in params.items():
        setattr(request.params, name, value)
    return request


def _tool_answer_without_id() -> infer_pb2.InferRequest:
    request = chat()
    request.messages.add(role=infer_pb2.ROLE_TOOL).content.add(text="42")
    return request


def _bad_tool_arguments() -> infer_pb2.InferRequest:
    request = chat()
    request.messages.add(role=infer_pb2.ROLE_ASSISTANT).tool_calls.add(
        id="c1", name="lookup", arguments_json="{not json"
    )
    return request


def _bad_tool_schema(schema: str) -> infer_pb2.InferRequest:
    request = chat()
    request.tools.add(name="lookup", parameters_json_schema=schema)
    return request


def _image_without_source() -> infer_pb2.InferRequest:
    request = chat()
    request.messages[0].content.add(image=infer_pb2.ImagePart(detail="high"))
    return request


def _url_image_with_media_type() -> infer_pb2.InferRequest:
    request = chat()
    request.messages[0].content.add(
        image=infer_pb2.ImagePart(url="https://example.com/a.png", media_type="image/gif")
    )
    return request


def _unknown_role() -> infer_pb2.InferRequest:
    request = infer_pb2.InferRequest()
    request.messages.add().content.add(text="who am I")
    return request


def _json_schema_without_schema() -> infer_pb2.InferRequest:
    request = chat()
    request.response_format.type = infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA
    return request


# (request, metadata) -> expected status and a fragment of the message
BAD_INPUT: dict[
    str, tuple[Callable[[], infer_pb2.InferRequest], tuple[tuple[str, str], ...], grpc.StatusCode, str]
] = {
    "no key": (chat, (), grpc.StatusCode.UNAUTHENTICATED, "authorization: missing"),
    "not bearer": (chat, (("authorization", API_KEY),), grpc.StatusCode.UNAUTHENTICATED, "missing"),
    "invalid key": (
        chat,
        (("authorization", "Bearer sk-wrong"),),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid credentials",
    ),
    "expired key": (
        chat,
        (("authorization", f"Bearer {EXPIRED_KEY}"),),
        grpc.StatusCode.UNAUTHENTICATED,
        "expired",
    ),
    "inactive tenant": (
        chat,
        (("authorization", f"Bearer {INACTIVE_KEY}"),),
        grpc.StatusCode.UNAUTHENTICATED,
        "not active",
    ),
    "disallowed model": (
        lambda: chat(model="sim-secret"),
        AUTH,
        grpc.StatusCode.NOT_FOUND,
        "sim-secret",
    ),
    "unknown model": (lambda: chat(model="no-such-model"), AUTH, grpc.StatusCode.NOT_FOUND, "no-such-model"),
    "empty messages": (
        infer_pb2.InferRequest,
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages: must not be empty",
    ),
    "temperature": (
        lambda: _with(temperature=2.5),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "params.temperature",
    ),
    "top_p zero": (lambda: _with(top_p=0.0), AUTH, grpc.StatusCode.INVALID_ARGUMENT, "params.top_p"),
    "top_p above one": (lambda: _with(top_p=1.5), AUTH, grpc.StatusCode.INVALID_ARGUMENT, "params.top_p"),
    "max tokens zero": (
        lambda: _with(max_output_tokens=0),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "params.max_output_tokens",
    ),
    "max tokens above model": (
        lambda: _with(max_output_tokens=100_000),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "params.max_output_tokens: 100000 is above the maximum of model 'sim-fast' (4096)",
    ),
    "presence penalty": (
        lambda: _with(presence_penalty=2.5),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "params.presence_penalty",
    ),
    "frequency penalty": (
        lambda: _with(frequency_penalty=-3.0),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "params.frequency_penalty",
    ),
    "nan temperature": (
        lambda: _with(temperature=float("nan")),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "params.temperature",
    ),
    "unknown role": (_unknown_role, AUTH, grpc.StatusCode.INVALID_ARGUMENT, "messages[0].role"),
    "tool message without id": (
        _tool_answer_without_id,
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[1].tool_call_id",
    ),
    "tool arguments not JSON": (
        _bad_tool_arguments,
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[1].tool_calls[0].arguments_json",
    ),
    "tool schema not JSON": (
        lambda: _bad_tool_schema("{"),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0].parameters_json_schema",
    ),
    "tool schema invalid": (
        lambda: _bad_tool_schema('{"type": "no-such-type"}'),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0].parameters_json_schema: not a valid JSON Schema",
    ),
    "image without url or data": (
        _image_without_source,
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[0].content[1].image",
    ),
    # It was dropped: the provider reads a URL's type from what it fetches, not from this.
    "url image with a media type": (
        _url_image_with_media_type,
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[0].content[1].image.media_type: only for an image sent as data",
    ),
    "json_schema without schema": (
        _json_schema_without_schema,
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "response_format.json_schema",
    ),
    "bad correlation id": (
        lambda: chat(correlation_id="has spaces in it"),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "correlation_id",
    ),
    # Unknown enum values were read as UNSPECIFIED and dropped: a class the node does not know
    # routed as unclassified, a capability it does not know as not required (fail open).
    "unknown data classification": (
        lambda: chat(data_classification=99),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_classification: unknown data classification 99",
    ),
    "unknown required capability": (
        lambda: chat(required_capabilities=[common_pb2.CAPABILITY_CHAT, 99]),
        AUTH,
        grpc.StatusCode.INVALID_ARGUMENT,
        "required_capabilities[1]: unknown capability 99",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_gets_a_precise_status_and_the_node_keeps_serving(
    case: str, infer_stub: Stub
) -> None:
    make, metadata, code, fragment = BAD_INPUT[case]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await infer_stub.Infer(make(), metadata=metadata, timeout=10)
    assert info.value.code() is code
    assert fragment in (info.value.details() or "")
    assert "correlation id" in (info.value.details() or "")
    response = await infer_stub.Infer(chat("still there?"), metadata=AUTH, timeout=10)
    assert response.message.content[0].text


async def _model_refusal(stub: Stub, alias: str, *, stream: bool) -> tuple[grpc.StatusCode, str]:
    """Status and message of a request naming ``alias``, the alias and correlation id masked."""

    async def call() -> None:
        if stream:
            async for _ in stub.InferStream(chat(model=alias), metadata=AUTH, timeout=10):
                pass
        else:
            await stub.Infer(chat(model=alias), metadata=AUTH, timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call()
    details = (info.value.details() or "").rpartition(" (correlation id ")[0]
    assert alias in details
    return info.value.code(), details.replace(alias, "<alias>")


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_model_the_tenant_may_not_use_looks_exactly_like_one_that_does_not_exist(
    infer_stub: Stub, stream: bool
) -> None:
    # sim-secret is in the registry (another tenant's, say); sim-ghost is in no registry.
    existing = await _model_refusal(infer_stub, "sim-secret", stream=stream)
    missing = await _model_refusal(infer_stub, "sim-ghost", stream=stream)
    assert existing == missing == (grpc.StatusCode.NOT_FOUND, "model: unknown model '<alias>'")


async def test_answer_carries_routing_usage_cost_and_ids(infer_stub: Stub) -> None:
    call = infer_stub.Infer(chat("hello there", correlation_id="cid-123"), metadata=AUTH, timeout=10)
    response = await call
    assert response.correlation_id == "cid-123"
    assert ("x-correlation-id", "cid-123") in tuple(await call.trailing_metadata() or ())
    assert response.model == "sim-fast"
    assert response.provider == "sim"
    assert response.finish_reason == infer_pb2.FINISH_REASON_STOP
    assert response.routing.policy_id == "pol-acme"
    assert response.routing.chosen_model == "sim-fast"
    assert [a.outcome for a in response.routing.attempts] == ["ok"]
    usage = response.usage
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    # sim-fast: 0.10 USD per million input tokens, 0.40 per million output tokens.
    assert response.cost.currency == "USD"
    assert response.cost.input_nanos == round(usage.input_tokens * 100)
    assert response.cost.output_nanos == round(usage.output_tokens * 400)
    assert response.cost.total_nanos == response.cost.input_nanos + response.cost.output_nanos
    assert response.evidence_id
    assert response.snapshot_version == 1


async def test_correlation_id_from_metadata_is_used(infer_stub: Stub) -> None:
    response = await infer_stub.Infer(
        chat(), metadata=(*AUTH, ("x-correlation-id", "from-header")), timeout=10
    )
    assert response.correlation_id == "from-header"


async def test_explicit_allowed_model_is_used(infer_stub: Stub) -> None:
    response = await infer_stub.Infer(chat(model="sim-smart"), metadata=AUTH, timeout=10)
    assert response.model == "sim-smart"
    assert response.routing.rule


async def test_upstream_500_is_unavailable_with_the_correlation_id(infer_stub: Stub, simulator: Any) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(fail_status=500))
    call = infer_stub.Infer(chat(correlation_id="cid-500"), metadata=AUTH, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "cid-500" in (info.value.details() or "")
    assert ("x-correlation-id", "cid-500") in tuple(info.value.trailing_metadata() or ())
    simulator.set_behaviour("sim-fast", Behaviour())
    assert (await infer_stub.Infer(chat(), metadata=AUTH, timeout=10)).message.content[0].text


async def test_upstream_slower_than_the_deadline_is_deadline_exceeded_with_the_correlation_id(
    infer_stub: Stub, simulator: Any
) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=4000))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        # 2 s: the node keeps 200 ms back, room for a loaded machine's loop to answer first.
        await infer_stub.Infer(chat(correlation_id="cid-slow"), metadata=AUTH, timeout=2.0)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "cid-slow" in (info.value.details() or "")
    simulator.set_behaviour("sim-fast", Behaviour())
    assert (await infer_stub.Infer(chat(), metadata=AUTH, timeout=10)).message.content[0].text


async def test_embed(infer_stub: Stub) -> None:
    request = infer_pb2.EmbedRequest(model="sim-embed", inputs=["alpha", "beta"])
    response = await infer_stub.Embed(request, metadata=AUTH, timeout=10)
    assert [e.index for e in response.embeddings] == [0, 1]
    assert all(len(e.values) > 0 for e in response.embeddings)
    assert response.model == "sim-embed"
    assert response.evidence_id


async def test_embed_without_inputs_names_the_field(infer_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await infer_stub.Embed(infer_pb2.EmbedRequest(model="sim-embed"), metadata=AUTH, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs: must not be empty" in (info.value.details() or "")


async def test_embed_with_an_unknown_data_classification_names_the_field(infer_stub: Stub) -> None:
    request = infer_pb2.EmbedRequest(model="sim-embed", inputs=["x"], data_classification=99)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await infer_stub.Embed(request, metadata=AUTH, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "data_classification: unknown data classification 99" in (info.value.details() or "")


async def test_a_request_runs_on_the_snapshot_it_started_with(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node: DataPlaneNode = await start_node()
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=300))
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        in_flight = stub.Infer(chat("slow"), metadata=AUTH, timeout=10)
        await eventually(lambda: simulator.stats("sim-fast").chat >= 1, message="request reached upstream")
        assert (await node.store.apply(envelope(snapshot(2, simulator.base_url), signing_key))).accepted
        first = await in_flight
        second = await stub.Infer(chat(), metadata=AUTH, timeout=10)
    assert first.snapshot_version == 1
    assert second.snapshot_version == 2
