"""Property-based fuzzing of the Infer API against a real node.

Generated InferRequest and EmbedRequest messages (odd and huge strings, unicode, empty
fields, unknown enum values, hostile JSON, random image bytes) and random bytes sent as
the request itself. Whatever arrives, the node answers with a defined status (never
UNKNOWN or INTERNAL) whose message is bounded, and keeps serving correct requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, chat
from tests.fuzz.conftest import FuzzNode

AUTH = (("authorization", f"Bearer {API_KEY}"),)
SERVICE = "/signalbox.api.infer.v1.InferService/"
MAX_DETAILS = 2048
UNDEFINED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@pytest.fixture(scope="module")
def channel(fuzz_node: FuzzNode) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_node.address) as channel:
        yield channel


# ---- strategies


def _sized(n: int) -> st.SearchStrategy[str]:
    # Protobuf strings are UTF-8: no lone surrogates (those are the wire fuzz's job).
    return st.characters(codec="utf-8").map(lambda c: c * n)


ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\u202e",
            "\U0001d518\U0001d52b\U0001d526",
            "\ufeff",
            "sim-fast",
            "sim-embed",
            "sim-secret",
        ]
    ),
    st.sampled_from([64, 65, 129, 4_096, 70_000, 300_000]).flatmap(_sized),
)
ENUM = st.integers(min_value=-3, max_value=12)
ROLE = st.one_of(st.sampled_from([1, 2, 3, 4, 5]), ENUM)
MODEL = st.one_of(st.just(""), st.sampled_from(["sim-fast", "sim-smart", "sim-embed"]), ODD_TEXT)
CORRELATION_ID = st.one_of(
    st.just(""), st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1), ODD_TEXT
)
FINITE_OR_NOT = st.floats(allow_nan=True, allow_infinity=True)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
JSON_TEXT = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.dictionaries(st.sampled_from(["type", "properties", "items", "required", "enum"]), JSON_VALUES).map(
        json.dumps
    ),
    st.integers(min_value=60, max_value=5_000).map(lambda d: '{"a": ' * d + "1" + "}" * d),
    st.integers(min_value=60, max_value=5_000).map(lambda d: "[" * d + "]" * d),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999999", "-1e400"]).map(
        lambda n: f'{{"type": "number", "maximum": {n}}}'
    ),
    st.just('{"n": ' + "9" * 5_000 + "}"),
    st.text(max_size=30),
)


@st.composite
def messages(draw: st.DrawFn) -> infer_pb2.Message:
    message = infer_pb2.Message(role=draw(ENUM), tool_call_id=draw(ODD_TEXT), name=draw(st.text(max_size=10)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["text", "url", "data", "empty"]))
        if kind == "text":
            message.content.add(text=draw(ODD_TEXT))
        elif kind == "url":
            message.content.add(
                image=infer_pb2.ImagePart(url=draw(ODD_TEXT), detail=draw(st.text(max_size=8)))
            )
        elif kind == "data":
            message.content.add(
                image=infer_pb2.ImagePart(
                    data=draw(st.binary(max_size=64)), media_type=draw(st.text(max_size=12))
                )
            )
        else:
            message.content.add()
    for _ in range(draw(st.integers(0, 2))):
        message.tool_calls.add(
            id=draw(st.text(max_size=8)), name=draw(ODD_TEXT), arguments_json=draw(JSON_TEXT)
        )
    return message


@st.composite
def infer_requests(draw: st.DrawFn) -> infer_pb2.InferRequest:
    request = infer_pb2.InferRequest(
        model=draw(MODEL),
        task=draw(st.text(max_size=12)),
        data_classification=draw(ENUM),
        correlation_id=draw(CORRELATION_ID),
        metadata=draw(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)),
        required_capabilities=draw(st.lists(ENUM, max_size=3)),
    )
    if draw(st.booleans()):  # most callers start with a plain user message
        request.messages.add(role=infer_pb2.ROLE_USER).content.add(text=draw(ODD_TEXT))
    request.messages.extend(draw(st.lists(messages(), max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        request.tools.add(
            name=draw(ODD_TEXT),
            description=draw(st.text(max_size=20)),
            parameters_json_schema=draw(JSON_TEXT),
            strict=draw(st.booleans()),
        )
    if draw(st.booleans()):
        request.tool_choice.mode = draw(ENUM)
        request.tool_choice.tool_name = draw(ODD_TEXT)
    if draw(st.booleans()):
        rf = request.response_format
        rf.type, rf.schema_name, rf.json_schema = draw(ENUM), draw(st.text(max_size=10)), draw(JSON_TEXT)
    p = request.params
    if draw(st.booleans()):
        p.max_output_tokens = draw(st.integers(0, 2**32 - 1))
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        if draw(st.booleans()):
            setattr(p, name, draw(FINITE_OR_NOT))
    if draw(st.booleans()):
        p.seed = draw(st.integers(-(2**63), 2**63 - 1))
    p.stop.extend(draw(st.lists(st.text(max_size=5), max_size=20)))
    return request


embed_requests = st.builds(
    infer_pb2.EmbedRequest,
    model=st.one_of(st.just("sim-embed"), MODEL),
    inputs=st.lists(ODD_TEXT, max_size=4),
    dimensions=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    task=st.text(max_size=10),
    data_classification=ENUM,
    metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
    correlation_id=CORRELATION_ID,
)


# ---- the properties


def _defined(error: grpc.RpcError) -> None:
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    assert code not in UNDEFINED, (code, details[:500])
    assert len(details.encode()) < MAX_DETAILS, (code, len(details))


def _call(channel: grpc.Channel, call: Any) -> None:
    """Make the call; a refusal must be defined and bounded; the node must serve afterwards."""
    try:
        response = call()
        if isinstance(response, Iterator):
            for _ in response:
                pass
    except grpc.RpcError as error:
        _defined(error)
    _still_serving(channel)


def _still_serving(channel: grpc.Channel) -> None:
    response = infer_pb2_grpc.InferServiceStub(channel).Infer(chat("still there?"), metadata=AUTH, timeout=10)
    assert response.message.content[0].text.startswith("Simulated answer")


@given(request=infer_requests(), streamed=st.booleans())
def test_any_infer_request_gets_a_defined_status(
    channel: grpc.Channel, request: infer_pb2.InferRequest, streamed: bool
) -> None:
    stub = infer_pb2_grpc.InferServiceStub(channel)
    method = stub.InferStream if streamed else stub.Infer
    _call(channel, lambda: method(request, metadata=AUTH, timeout=10))


@given(request=embed_requests)
def test_any_embed_request_gets_a_defined_status(
    channel: grpc.Channel, request: infer_pb2.EmbedRequest
) -> None:
    stub = infer_pb2_grpc.InferServiceStub(channel)
    _call(channel, lambda: stub.Embed(request, metadata=AUTH, timeout=10))


@given(
    data=st.one_of(
        st.binary(max_size=200),
        infer_requests()
        .map(lambda r: r.SerializeToString())
        .flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n] + b"\xff\xfe" + b[n:])),
    ),
    method=st.sampled_from(["Infer", "InferStream", "Embed"]),
    anonymous=st.booleans(),
)
def test_random_bytes_get_a_defined_status(
    channel: grpc.Channel, data: bytes, method: str, anonymous: bool
) -> None:
    metadata = () if anonymous else AUTH
    if method == "InferStream":
        stream = channel.unary_stream(SERVICE + method, request_serializer=None, response_deserializer=None)
        _call(channel, lambda: stream(data, metadata=metadata, timeout=10))
    else:
        unary = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
        _call(channel, lambda: unary(data, metadata=metadata, timeout=10))


def test_the_node_serves_a_correct_request_after_the_fuzzing(channel: grpc.Channel) -> None:
    """Runs after the properties above (file order): the node survived them."""
    _still_serving(channel)
