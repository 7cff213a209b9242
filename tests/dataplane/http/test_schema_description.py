"""A ``json_schema`` response format's ``description``, sent with the official ``openai``
SDK and over gRPC: carried to a provider whose wire format has a place for it, and governed
there as the schema is, alike through both doors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openai.types.shared_params import ResponseFormatJSONSchema

from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat
from tests.dataplane.governance.test_node_governance import EMAIL, SCHEMA, governed, one_record, rule, serving
from tests.dataplane.http.test_openai_sdk import recorded_alike


def _format(description: str) -> ResponseFormatJSONSchema:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "description": description, "schema": SCHEMA, "strict": True},
    }


async def test_the_description_reaches_the_provider_and_input_rules_read_it(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    # It was checked and dropped: the model never saw the caller's guidance for the answer.
    # Sent on, it is text the provider receives, so a rule must read it as it reads the schema.
    profile = {"input": {"rules": [rule("mask-email", "email", "mask")]}}
    node = await serving(start_node, governed(simulator.base_url, profile), signing_key, tmp_path)
    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as sdk:
        asked = [{"role": "user", "content": "how old is Ada?"}]
        served = await sdk.chat.completions.create(
            model="sim-fast",
            messages=asked,
            response_format=_format("Ada's age, in years"),  # type: ignore[arg-type]
        )
        assert served.choices[0].message.content
        sent = simulator.stats("sim-fast").last_request["response_format"]["json_schema"]
        assert sent["description"] == "Ada's age, in years"
        assert sent["schema"] == SCHEMA

        await sdk.chat.completions.create(
            model="sim-fast",
            messages=asked,  # type: ignore[arg-type]
            response_format=_format(f"the age of whoever writes from {EMAIL}"),
            extra_headers={"x-request-id": "masked-description"},
        )
    sent = simulator.stats("sim-fast").last_request["response_format"]["json_schema"]
    assert sent["description"] == "the age of whoever writes from [EMAIL_1]"
    (action,) = one_record(node, "masked-description")["governance"]
    assert [p["field"] for p in action["positions"]] == ["response_format.json_schema.description"]


async def test_the_description_reaches_the_provider_and_the_evidence_alike_through_both_doors(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    # The gRPC door had no field for it: a gRPC caller's guidance could not reach the model,
    # and the same request was a different request through the other door.
    profile = {"input": {"rules": [rule("mask-email", "email", "mask")]}}
    node = await serving(start_node, governed(simulator.base_url, profile), signing_key, tmp_path)
    description = f"the age of whoever writes from {EMAIL}"
    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as sdk:
        over_http = await sdk.chat.completions.with_raw_response.create(
            model="sim-fast",
            messages=[{"role": "user", "content": "how old is Ada?"}],
            response_format=_format(description),
        )
    sent_over_http = simulator.stats("sim-fast").last_request["response_format"]

    request = chat("how old is Ada?", model="sim-fast", correlation_id="described-over-grpc")
    request.response_format.type = infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA
    request.response_format.schema_name = "person"
    request.response_format.json_schema = json.dumps(SCHEMA)
    request.response_format.strict = True
    request.response_format.description = description
    async with grpc.aio.insecure_channel(node.address) as channel:
        over_grpc = await infer_pb2_grpc.InferServiceStub(channel).Infer(request, metadata=AUTH, timeout=10)
    sent_over_grpc = simulator.stats("sim-fast").last_request["response_format"]

    assert sent_over_grpc == sent_over_http
    assert sent_over_grpc["json_schema"]["description"] == "the age of whoever writes from [EMAIL_1]"
    await recorded_alike(node, over_http.headers["x-evidence-id"], over_grpc.evidence_id, "governance")
    (action,) = one_record(node, "described-over-grpc")["governance"]
    assert [p["field"] for p in action["positions"]] == ["response_format.json_schema.description"]


def _described(kind: infer_pb2.ResponseFormat.Type.ValueType, description: bytes) -> bytes:
    """A serialized chat request whose response format is of ``kind`` with ``description``
    as raw bytes (field 5 of ResponseFormat), ``SCHEMA`` when the kind is JSON_SCHEMA."""
    request = chat("how old is Ada?", model="sim-fast", correlation_id="described")
    request.response_format.type = kind
    if kind == infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA:
        request.response_format.json_schema = json.dumps(SCHEMA)
    fmt = request.response_format.SerializeToString() + b"\x2a" + bytes([len(description)]) + description
    request.ClearField("response_format")
    return request.SerializeToString() + b"\x32" + bytes([len(fmt)]) + fmt  # field 6


@pytest.mark.parametrize(
    ("kind", "description", "problem"),
    [
        (infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA, b"\xff\xfe", "String field had bad UTF-8"),
        (
            infer_pb2.ResponseFormat.TYPE_JSON_OBJECT,
            b"the age",
            "response_format.description: only allowed when type is JSON_SCHEMA",
        ),
        (
            infer_pb2.ResponseFormat.TYPE_UNSPECIFIED,
            b"the age",
            "response_format.description: only allowed when type is JSON_SCHEMA",
        ),
    ],
    ids=["bad UTF-8", "type JSON_OBJECT", "type unspecified"],
)
async def test_a_grpc_description_the_http_door_would_refuse_is_refused_naming_it(
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    kind: infer_pb2.ResponseFormat.Type.ValueType,
    description: bytes,
    problem: str,
) -> None:
    # Unknown to the gRPC door, the field was skipped unread: bad UTF-8 the HTTP door refuses,
    # or a description given with a type that has no schema, was served as if never sent.
    node = await serving(start_node, governed(simulator.base_url, {}), signing_key, tmp_path)
    async with grpc.aio.insecure_channel(node.address) as channel:
        unary = channel.unary_unary(
            "/signalbox.api.infer.v1.InferService/Infer",
            request_serializer=None,
            response_deserializer=infer_pb2.InferResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unary(_described(kind, description), metadata=AUTH, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (refused.value.details() or "")
    assert simulator.stats("sim-fast").total == 0
