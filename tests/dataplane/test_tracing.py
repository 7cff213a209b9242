"""OpenTelemetry traces of a request with one fallback, received by a real OTLP/HTTP receiver
(an aiohttp server decoding the protobuf payloads): the span tree, its GenAI attributes, the
caller's trace context as parent, and each attempt's own context in the upstream's
``traceparent`` header. Off, nothing is traced and no header is sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from dataplane.pipeline.tracing import enabled
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@dataclass
class Upstream:
    """OpenAI-compatible: ``sim-fast`` answers 500, every other model answers; records the
    ``traceparent`` of each request."""

    base_url: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((body["model"], request.headers.get("traceparent", "")))
        if body["model"] == "sim-fast":
            return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=500)
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": 7,
                    "completion_tokens": 2,
                    "total_tokens": 9,
                    "completion_tokens_details": {"reasoning_tokens": 1},
                },
            }
        )


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: every span it was sent, as protobuf messages."""

    endpoint: str = ""
    spans: list[Any] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/x-protobuf"
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


async def _serve(path: str, handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    served = Upstream()
    runner, served.base_url = await _serve("/v1/chat/completions", served.handle)
    yield served
    await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Asked for before ``start_node``: it must outlive the nodes, whose stop flushes spans."""
    received = Receiver()
    runner, received.endpoint = await _serve("/v1/traces", received.handle)
    yield received
    await runner.cleanup()


def _fallback_snapshot(base_url: str) -> Any:
    snap = snapshot(1, base_url)
    document = {
        "default_model": "sim-fast",
        "allowed_models": ["sim-fast", "sim-smart"],
        "rules": [{"models": ["sim-fast", "sim-smart"]}],
        "retry": {"max_attempts": 2, "attempts_per_deployment": 1},
    }
    snap.policies[0].document_json = json.dumps(document)
    return snap


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


async def test_a_request_with_one_fallback_is_one_span_tree_joined_to_the_callers_and_the_upstreams(
    receiver: Receiver,
    start_node: NodeFactory,
    signing_key: Ed25519PrivateKey,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    node = await start_node()
    assert (await node.store.apply(envelope(_fallback_snapshot(upstream.base_url), signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).Infer(
            chat("hello", correlation_id="traced-1"),
            metadata=(*AUTH, ("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")),
        )
        answer = await call
    assert answer.model == "sim-smart"

    def exported() -> list[Any]:
        assert any(s.kind == s.SPAN_KIND_SERVER for s in receiver.spans)
        return receiver.spans

    spans = await eventually(exported, timeout=15, message="the request's spans exported")
    server = next(s for s in spans if s.kind == s.SPAN_KIND_SERVER)
    # The caller's trace: same trace id, its span the parent.
    assert server.trace_id.hex() == CALLER_TRACE
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert server.name == "chat sim-smart"
    attributes = _attrs(server)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "sim-smart"
    assert attributes["gen_ai.response.model"] == "sim-smart"
    assert attributes["gen_ai.provider.name"] == "simulated"
    assert attributes["gen_ai.usage.input_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.usage.reasoning.output_tokens"] == 1  # of the 2 (it was left out)
    assert attributes["signalbox.correlation_id"] == "traced-1"
    assert attributes["signalbox.evidence_id"] == answer.evidence_id
    assert attributes["signalbox.tenant_id"] == "t-acme"

    children = [s for s in spans if s.parent_span_id == server.span_id]
    assert {s.trace_id.hex() for s in children} == {CALLER_TRACE}
    steps = [
        s.name
        for s in sorted(children, key=lambda s: s.start_time_unix_nano)
        if s.kind == s.SPAN_KIND_INTERNAL
    ]
    assert steps == [
        "admit",
        "validate",
        "govern input",
        "route",
        "limit",
        "govern output",
        "account",
        "record",
    ]
    attempts = sorted(
        (s for s in children if s.kind == s.SPAN_KIND_CLIENT), key=lambda s: s.start_time_unix_nano
    )
    assert [s.name for s in attempts] == ["chat sim-fast", "chat sim-smart"]
    assert attempts[0].status.code == attempts[0].status.STATUS_CODE_ERROR
    assert attempts[1].status.code != attempts[1].status.STATUS_CODE_ERROR
    assert {_attrs(a)["gen_ai.provider.name"] for a in attempts} == {"simulated"}
    for step in children:
        assert server.start_time_unix_nano <= step.start_time_unix_nano <= step.end_time_unix_nano
        assert step.end_time_unix_nano <= server.end_time_unix_nano

    # Each attempt's own context reached the provider.
    assert upstream.seen == [
        ("sim-fast", f"00-{CALLER_TRACE}-{attempts[0].span_id.hex()}-01"),
        ("sim-smart", f"00-{CALLER_TRACE}-{attempts[1].span_id.hex()}-01"),
    ]
    # Nothing of the request's content or credentials rides on a span.
    for span in spans:
        for value in _attrs(span).values():
            assert "hello" not in str(value)
            assert AUTH[0][1].split()[-1] not in str(value)


async def test_untraced_requests_send_no_trace_context_upstream(
    start_node: NodeFactory,
    signing_key: Ed25519PrivateKey,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    node = await start_node()
    assert (await node.store.apply(envelope(_fallback_snapshot(upstream.base_url), signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        await infer_pb2_grpc.InferServiceStub(channel).Infer(
            chat("hello"), metadata=(*AUTH, ("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        )
    assert upstream.seen == [("sim-fast", ""), ("sim-smart", "")]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(environ: dict[str, str], on: bool) -> None:
    assert enabled(environ) is on


async def test_a_traced_stream_streams_and_its_attempt_span_ends_with_it(
    receiver: Receiver,
    start_node: NodeFactory,
    signing_key: Ed25519PrivateKey,
    simulator: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    node = await start_node()
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        events = [
            e
            async for e in infer_pb2_grpc.InferServiceStub(channel).InferStream(chat("stream"), metadata=AUTH)
        ]
    assert events[-1].WhichOneof("event") == "end"
    assert any(e.WhichOneof("event") == "delta" for e in events)

    def exported() -> tuple[Any, Any]:
        servers = [s for s in receiver.spans if s.kind == s.SPAN_KIND_SERVER]
        clients = [s for s in receiver.spans if s.kind == s.SPAN_KIND_CLIENT]
        assert servers
        assert clients
        return servers[0], clients[0]

    server, client = await eventually(exported, timeout=15, message="the stream's spans exported")
    assert client.parent_span_id == server.span_id
    assert server.start_time_unix_nano <= client.start_time_unix_nano < client.end_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano
