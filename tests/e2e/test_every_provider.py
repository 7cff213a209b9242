"""Every provider type through a real node: one Infer API, one normalized answer.

One ``DataPlaneNode`` serves a signed snapshot with a provider of every
registered type (``BUILTIN_ADAPTERS``), each pointing at its own
``FakeUpstream`` that speaks that provider's wire format (the rows of
``WIRES`` in the adapter tests, plus the embeddings and error bodies below).
Each provider has a chat model ``chat-<type>`` and an embeddings model
``embed-<type>`` (even where the type has no embeddings endpoint). The tests call the
node over gRPC with a tenant API key, exactly as an application would, and
assert what must hold whatever the provider:

- the same request gives the same ``InferResponse`` shape, with usage and the
  cost computed from the model's prices, plainly and streamed;
- the first ``StreamDelta`` reaches the caller while the upstream is still
  holding its stream open;
- cancelling the caller's stream disconnects the upstream request;
- Embed works for every type with embeddings and fails with a status that
  names the reason for the others;
- upstream errors map to their documented status without leaking the body.

A provider type added to the registry without a row here fails these tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.node_settings import NodeSettings
from dataplane.providers.registry import BUILTIN_ADAPTERS
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.providers import canned
from tests.dataplane.providers.fakes import HANG, FakeUpstream, Reply, Step, Wait, json_reply
from tests.dataplane.providers.samples import PARIS_ARGS, WEATHER_SCHEMA
from tests.dataplane.providers.test_cross_provider import WIRES, Wire
from tests.fixtures.keys import sign_payload
from tests.helpers import eventually

TYPES = sorted(BUILTIN_ADAPTERS)
by_type = pytest.mark.parametrize("type_name", TYPES)

API_KEY = "sk-e2e-tenant-0123456789"
AUTH = (("authorization", f"Bearer {API_KEY}"),)
CREDENTIAL = "sk-e2e-upstream-SECRET-42"
LEAK = "RAW-UPSTREAM-BODY-do-not-show"
"""Put in every upstream error body; must never reach a caller."""

INPUT_PRICE = 1_000_000_000
OUTPUT_PRICE = 4_000_000_000
"""Nano-USD per million tokens: 1,000 and 4,000 nanos per token."""

CHAT_CAPS = (common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_STREAMING, common_pb2.CAPABILITY_TOOLS)
TIMEOUT = 10.0

# -- what each type adds to its WIRES row ------------------------------------------------------

_VECTORS = ((0.25, 0.5), (0.75, 1.0))
_OPENAI_EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": i, "embedding": list(v)} for i, v in enumerate(_VECTORS)],
    "model": "embed-test",
    "usage": {"prompt_tokens": 4, "total_tokens": 4},
}
_GEMINI_EMBEDDINGS = {"embeddings": [{"values": list(v)} for v in _VECTORS]}
_OLLAMA_EMBEDDINGS = {
    "model": "embed-test",
    "embeddings": [list(v) for v in _VECTORS],
    "prompt_eval_count": 4,
}

EMBEDDINGS: Mapping[str, Mapping[str, Any] | None] = {
    "openai": _OPENAI_EMBEDDINGS,
    "azure_openai": _OPENAI_EMBEDDINGS,
    "mistral": _OPENAI_EMBEDDINGS,
    "openai_compatible": _OPENAI_EMBEDDINGS,
    "simulated": _OPENAI_EMBEDDINGS,
    "gemini": _GEMINI_EMBEDDINGS,
    "ollama": _OLLAMA_EMBEDDINGS,
    "anthropic": None,
}
"""Each type's answer to two inputs; None for types without an embeddings endpoint."""


def _openai_error(type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": f"{LEAK} key {CREDENTIAL}", "type": type_, "param": None, "code": code}}


def _mistral_error(type_: str, code: str) -> dict[str, Any]:
    return {
        "object": "error",
        "message": f"{LEAK} key {CREDENTIAL}",
        "type": type_,
        "param": None,
        "code": code,
    }


def _gemini_error(code: int, status: str) -> dict[str, Any]:
    return canned.gemini_error(code, status, f"{LEAK} key {CREDENTIAL}")


_OPENAI_ERRORS = {
    429: _openai_error("requests", "rate_limit_exceeded"),
    401: _openai_error("invalid_request_error", "invalid_api_key"),
}
ERRORS: Mapping[str, Mapping[int, Mapping[str, Any]]] = {
    "openai": _OPENAI_ERRORS,
    "azure_openai": _OPENAI_ERRORS,
    "openai_compatible": _OPENAI_ERRORS,
    "simulated": _OPENAI_ERRORS,
    "mistral": {
        429: _mistral_error("rate_limited", "1300"),
        401: _mistral_error("invalid_request_error", "1000"),
    },
    "anthropic": {
        429: canned.anthropic_error("rate_limit_error", f"{LEAK} key {CREDENTIAL}"),
        401: canned.anthropic_error("authentication_error", f"{LEAK} key {CREDENTIAL}"),
    },
    "gemini": {429: _gemini_error(429, "RESOURCE_EXHAUSTED"), 401: _gemini_error(401, "UNAUTHENTICATED")},
    "ollama": {429: {"error": f"{LEAK} key {CREDENTIAL}"}, 401: {"error": f"{LEAK} key {CREDENTIAL}"}},
}
"""Each type's documented error body for HTTP 429 and 401."""

EXPECTED_STATUS = {429: grpc.StatusCode.RESOURCE_EXHAUSTED, 401: grpc.StatusCode.UNAVAILABLE}
"""From the table in ``dataplane.errors``: RateLimited, UpstreamAuthFailed (the node's key is wrong)."""

_WIRES = {w.type_name: w for w in WIRES}


def wire_of(type_name: str) -> Wire:
    assert type_name in _WIRES, f"provider type {type_name!r} has no wire-format row in WIRES"
    return _WIRES[type_name]


# -- the node and its upstreams ----------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """The running node, a channel to it, and one fake upstream per provider type."""

    node: DataPlaneNode
    stub: infer_pb2_grpc.InferServiceAsyncStub
    upstreams: Mapping[str, FakeUpstream]


def build_snapshot(upstreams: Mapping[str, FakeUpstream], credential_file: Path) -> snapshot_pb2.Snapshot:
    snap = snapshot_pb2.Snapshot(version=1, scope=snapshot_pb2.Scope(deployment="e2e"))
    snap.created_at.FromSeconds(1_700_000_000)
    snap.tenants.add(id="t-acme", name="acme", active=True)
    snap.api_keys.add(
        id="k-acme", tenant_id="t-acme", secret_sha256=hashlib.sha256(API_KEY.encode()).digest()
    )
    for type_name, upstream in upstreams.items():
        wire = wire_of(type_name)
        provider = snap.providers.add(
            id=f"p-{type_name}",
            name=f"fake-{type_name}",
            type=type_name,
            base_url=upstream.base_url + wire.path,
            settings=wire.settings,
        )
        provider.credential.file = str(credential_file)
        # Every type gets an embeddings model, also those without an endpoint: a registry
        # entry can claim what the provider type cannot do.
        models = (
            (f"chat-{type_name}", CHAT_CAPS),
            (f"embed-{type_name}", (common_pb2.CAPABILITY_EMBEDDINGS,)),
        )
        for alias, caps in models:
            model = snap.models.add(
                id=f"m-{alias}",
                alias=alias,
                capabilities=caps,
                context_window=128_000,
                max_output_tokens=4096,
                input_price_nanos_per_mtok=INPUT_PRICE,
                output_price_nanos_per_mtok=OUTPUT_PRICE,
            )
            model.deployments.add(id=f"d-{alias}", provider_id=provider.id, upstream_model=f"up-{alias}")
    # One try: each upstream answer is queued for exactly one call.
    policy = {
        "default_model": "chat-openai",
        # Visibility is explicit: the tenant may name every model of this registry.
        "allowed_models": sorted(m.alias for m in snap.models),
        "retry": {"max_attempts": 1, "attempts_per_deployment": 1},
    }
    snap.policies.add(id="pol-acme", tenant_id="t-acme", version=1, document_json=json.dumps(policy))
    return snap


@pytest.fixture(scope="module")
async def site(private_tmp: Path) -> AsyncIterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="every-provider-", dir=private_tmp))
    signing_key = Ed25519PrivateKey.generate()
    trust = root / "trust.pem"
    trust.write_bytes(signing_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    # In the node's default credential directory; the snapshot names it relative to it.
    credential_dir = root / "node" / "credentials"
    credential_dir.mkdir(parents=True)
    (credential_dir / "upstream.key").write_text(CREDENTIAL + "\n")
    credential_file = Path("upstream.key")
    upstreams = {t: await FakeUpstream().start() for t in TYPES}
    node = DataPlaneNode(
        NodeSettings(
            listen="127.0.0.1:0",
            trust_keys=(trust,),
            node_id="node-every-provider",
            data_dir=root / "node",
            scope=Scope(deployment="e2e"),
            drain_seconds=0.0,
        )
    )
    try:
        await node.start()
        payload = build_snapshot(upstreams, credential_file).SerializeToString()
        result = await node.store.apply(sign_payload(payload, signing_key))
        assert result.accepted, result.reason
        async with grpc.aio.insecure_channel(node.address) as channel:
            yield Site(node, infer_pb2_grpc.InferServiceStub(channel), upstreams)
    finally:
        await node.stop(0)
        for upstream in upstreams.values():
            await upstream.stop()


# -- requests and helpers ----------------------------------------------------------------------


def hello(type_name: str) -> infer_pb2.InferRequest:
    request = infer_pb2.InferRequest(model=f"chat-{type_name}")
    request.messages.add(role=infer_pb2.ROLE_SYSTEM).content.add(text="Be brief.")
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="Say hello")
    return request


def ask_weather(type_name: str) -> infer_pb2.InferRequest:
    request = hello(type_name)
    request.messages[-1].content[0].text = "Weather in Paris?"
    request.tools.add(
        name="get_weather", description="Current weather", parameters_json_schema=json.dumps(WEATHER_SCHEMA)
    )
    return request


def split_after(frames: list[bytes], piece: str) -> tuple[list[Step], list[Step]]:
    """``frames`` cut right after the frame that carries ``piece``."""
    cut = next(i for i, frame in enumerate(frames) if piece.encode() in frame) + 1
    return list(frames[:cut]), list(frames[cut:])


Stream = grpc.aio.UnaryStreamCall[infer_pb2.InferRequest, infer_pb2.InferStreamEvent]


async def read_event(call: Stream) -> infer_pb2.InferStreamEvent:
    """The next event; the call's iterator is made once, so reads and ``rest_of`` share it."""
    async with asyncio.timeout(TIMEOUT):
        return await anext(aiter(call))


async def rest_of(call: Stream) -> list[infer_pb2.InferStreamEvent]:
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in call]


@dataclass
class Folded:
    """A stream as a client folds it: text, tool calls by index, and the end event."""

    text: str
    calls: list[tuple[str, str]]
    end: infer_pb2.StreamEnd


def fold(events: list[infer_pb2.InferStreamEvent]) -> Folded:
    """Fold deltas up to the end event (a leading start event is skipped)."""
    if events and events[0].HasField("start"):
        events = events[1:]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "end", kinds
    assert set(kinds[:-1]) <= {"delta"}, kinds
    text = ""
    calls: dict[int, list[str]] = {}
    for event in events[:-1]:
        text += event.delta.text
        for delta in event.delta.tool_calls:
            if delta.index not in calls:
                assert delta.id, "the first fragment of a call carries its id"
                calls[delta.index] = [delta.name, ""]
            calls[delta.index][1] += delta.arguments_fragment
    return Folded(text, [(name, args) for name, args in calls.values()], events[-1].end)


def assert_priced(usage: common_pb2.Usage, cost: common_pb2.Cost) -> None:
    """Usage 12 in / 3 out (every canned answer says so), priced from the model's registry entry."""
    assert (usage.input_tokens, usage.output_tokens) == (12, 3)
    assert cost.currency == "USD"
    assert cost.input_nanos == 12 * INPUT_PRICE // 1_000_000
    assert cost.output_nanos == 3 * OUTPUT_PRICE // 1_000_000
    assert cost.total_nanos == cost.input_nanos + cost.output_nanos


# -- (a) the same normalized answer from every provider -----------------------------------------


def test_every_registered_type_has_a_row() -> None:
    missing = [t for t in TYPES if t not in _WIRES or t not in EMBEDDINGS or t not in ERRORS]
    assert not missing, f"provider types without an end-to-end row: {missing}"


@by_type
async def test_plain_answer_and_tool_call_have_one_shape(site: Site, type_name: str) -> None:
    wire, upstream = wire_of(type_name), site.upstreams[type_name]
    upstream.enqueue(wire.text(), wire.tool())

    text = await site.stub.Infer(hello(type_name), metadata=AUTH, timeout=TIMEOUT)
    tool = await site.stub.Infer(ask_weather(type_name), metadata=AUTH, timeout=TIMEOUT)

    # The node resolved the credential file and the adapter sent it upstream.
    assert any(CREDENTIAL in value for value in upstream.last.headers.values())
    assert text.message.role == infer_pb2.ROLE_ASSISTANT
    assert [p.text for p in text.message.content] == ["Hello!"]
    assert not text.message.tool_calls
    assert text.finish_reason == infer_pb2.FINISH_REASON_STOP
    assert (text.model, text.provider) == (f"chat-{type_name}", f"fake-{type_name}")
    assert text.evidence_id
    assert_priced(text.usage, text.cost)

    assert tool.message.role == infer_pb2.ROLE_ASSISTANT
    assert "".join(p.text for p in tool.message.content) == ""
    assert [(c.name, c.arguments_json, bool(c.id)) for c in tool.message.tool_calls] == [
        ("get_weather", PARIS_ARGS, True)
    ]
    assert tool.finish_reason == infer_pb2.FINISH_REASON_TOOL_CALLS
    assert_priced(tool.usage, tool.cost)


@by_type
async def test_streamed_answer_and_tool_call_have_one_shape(site: Site, type_name: str) -> None:
    wire = wire_of(type_name)
    site.upstreams[type_name].enqueue(
        wire.stream_reply(*wire.text_stream(["Hel", "lo!"])), wire.stream_reply(*wire.tool_stream())
    )

    text_call = site.stub.InferStream(hello(type_name), metadata=AUTH, timeout=TIMEOUT)
    start = await read_event(text_call)
    text = fold(await rest_of(text_call))
    tool = fold(await rest_of(site.stub.InferStream(ask_weather(type_name), metadata=AUTH, timeout=TIMEOUT)))

    assert (start.start.model, start.start.provider) == (f"chat-{type_name}", f"fake-{type_name}")
    assert (text.text, text.calls, text.end.finish_reason) == ("Hello!", [], infer_pb2.FINISH_REASON_STOP)
    assert_priced(text.end.usage, text.end.cost)
    assert text.end.evidence_id
    assert (tool.text, tool.calls, tool.end.finish_reason) == (
        "",
        [("get_weather", PARIS_ARGS)],
        infer_pb2.FINISH_REASON_TOOL_CALLS,
    )
    assert_priced(tool.end.usage, tool.end.cost)


# -- (b) chunk by chunk, (c) cancellation reaches the upstream ----------------------------------


@by_type
async def test_first_delta_reaches_the_caller_before_the_upstream_finishes(
    site: Site, type_name: str
) -> None:
    wire = wire_of(type_name)
    release = asyncio.Event()
    head, tail = split_after(wire.text_stream(["first", "second"]), "first")
    # The upstream cannot finish until this test has seen the first delta and sets ``release``.
    site.upstreams[type_name].enqueue(wire.stream_reply(*head, Wait(release), *tail))

    call = site.stub.InferStream(hello(type_name), metadata=AUTH, timeout=TIMEOUT)
    try:
        assert (await read_event(call)).HasField("start")
        first = await read_event(call)
        assert first.delta.text == "first"
    finally:
        release.set()
    rest = fold(await rest_of(call))
    assert rest.text == "second"
    assert rest.end.finish_reason == infer_pb2.FINISH_REASON_STOP


@by_type
async def test_cancelling_the_caller_disconnects_the_upstream(site: Site, type_name: str) -> None:
    wire, upstream = wire_of(type_name), site.upstreams[type_name]
    head, _ = split_after(wire.text_stream(["first", "second"]), "first")
    upstream.enqueue(wire.stream_reply(*head, HANG))
    before = upstream.disconnects

    call = site.stub.InferStream(hello(type_name), metadata=AUTH, timeout=30)
    assert (await read_event(call)).HasField("start")
    assert (await read_event(call)).delta.text == "first"
    call.cancel()

    await eventually(
        lambda: upstream.disconnects == before + 1, message=f"{type_name} upstream saw the disconnect"
    )


# -- (d) embeddings ----------------------------------------------------------------------------


def embed_request(model: str) -> infer_pb2.EmbedRequest:
    return infer_pb2.EmbedRequest(model=model, inputs=["a cat", "a dog"])


@by_type
async def test_embed_or_a_clear_refusal(site: Site, type_name: str) -> None:
    answer, upstream = EMBEDDINGS[type_name], site.upstreams[type_name]
    if answer is None:
        sent = len(upstream.requests)
        # A model whose registry entry lacks embeddings is refused by routing...
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await site.stub.Embed(embed_request(f"chat-{type_name}"), metadata=AUTH, timeout=TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "lacks capability 'embeddings'" in (refused.value.details() or "")
        # ...and one that claims them on a type without an endpoint by the adapter
        # (UpstreamBadRequest), which says so; neither reaches the upstream.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await site.stub.Embed(embed_request(f"embed-{type_name}"), metadata=AUTH, timeout=TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"{type_name}: this provider type has no embeddings endpoint" in (
            refused.value.details() or ""
        )
        assert len(upstream.requests) == sent
        return
    upstream.enqueue(json_reply(answer))
    response = await site.stub.Embed(embed_request(f"embed-{type_name}"), metadata=AUTH, timeout=TIMEOUT)
    # The deployment's upstream model name went out (in the URL or the body, as the type wants).
    assert f"up-embed-{type_name}" in upstream.last.path + upstream.last.body.decode()
    assert [(e.index, tuple(e.values)) for e in response.embeddings] == list(enumerate(_VECTORS))
    assert (response.model, response.provider) == (f"embed-{type_name}", f"fake-{type_name}")
    assert response.evidence_id
    assert response.cost.total_nanos == response.usage.input_tokens * INPUT_PRICE // 1_000_000


# -- (e) upstream errors -----------------------------------------------------------------------


def _error_reply(type_name: str, status: int) -> Reply:
    headers = {"Retry-After": "7"} if status == 429 else {}
    return json_reply(ERRORS[type_name][status], status, headers)


RPCS: Mapping[str, Callable[[Site, str], Awaitable[object]]] = {
    "Infer": lambda s, t: s.stub.Infer(hello(t), metadata=AUTH, timeout=TIMEOUT),
    "InferStream": lambda s, t: rest_of(s.stub.InferStream(hello(t), metadata=AUTH, timeout=TIMEOUT)),
}


@by_type
@pytest.mark.parametrize("status", sorted(EXPECTED_STATUS))
@pytest.mark.parametrize("rpc", sorted(RPCS))
async def test_upstream_errors_map_to_their_status_without_the_body(
    site: Site, type_name: str, status: int, rpc: str
) -> None:
    site.upstreams[type_name].enqueue(_error_reply(type_name, status))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await RPCS[rpc](site, type_name)
    details = caught.value.details() or ""
    assert caught.value.code() is EXPECTED_STATUS[status], details
    assert type_name in details
    assert f"HTTP {status}" in details
    assert LEAK not in details
    assert CREDENTIAL not in details
