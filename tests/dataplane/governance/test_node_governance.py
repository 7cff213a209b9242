"""Governance on a real node: gRPC and the HTTP door, real provider adapters against real
HTTP upstreams (the simulator, which echoes the prompt, or a small scripted one), evidence
read back from the node's log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.config.model import DeploymentMode, Scope
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, snapshot
from tests.dataplane.governance.node_streams import refused_stream, streamed_over_http

EMAIL = "ada.lovelace@example.org"
IBAN = "DE89370400440532013000"
SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


def rule(name: str, detector: str, action: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "detector": detector, "action": action, **fields}


def governed(
    base_url: str,
    profile: dict[str, Any],
    *,
    certified: bool = False,
    policy: dict[str, Any] | None = None,
    full_evidence: bool = False,
) -> snapshot_pb2.Snapshot:
    """The test snapshot with acme's governance ``profile``; its provider at site "lab", so
    nodes of every mode may call it; sim-smart certified for confidential data if asked."""
    snap = snapshot(1, base_url)
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    for model in snap.models:
        if model.alias in ("sim-fast", "sim-smart"):
            model.capabilities.append(common_pb2.CAPABILITY_JSON_SCHEMA)
        if certified and model.alias == "sim-smart":
            model.certified_for.append(common_pb2.DATA_CLASSIFICATION_CONFIDENTIAL)
    if policy is not None:
        snap.policies[0].document_json = json.dumps(policy)
    if full_evidence:
        snap.tenants[0].evidence.content = snapshot_pb2.EVIDENCE_CONTENT_FULL
    snap.governance_profiles.add(
        id="gp-acme", tenant_id="t-acme", version=3, document_json=json.dumps(profile)
    )
    return snap


async def serving(
    start_node: NodeFactory,
    snap: snapshot_pb2.Snapshot,
    key: Ed25519PrivateKey,
    tmp_path: Path,
    mode: DeploymentMode = DeploymentMode.CLOUD,
) -> DataPlaneNode:
    """A node of ``mode`` at site "lab" serving ``snap``: applied as the control plane would
    push it, or, air-gapped, from a pinned snapshot file."""
    scope = Scope(deployment="test", site="lab")
    if mode is DeploymentMode.AIR_GAPPED:
        pin = tmp_path / "site.snapshot"
        pin.write_bytes(envelope(snap, key).SerializeToString())
        return await start_node(mode=mode, scope=scope, snapshot_file=pin, http_listen="127.0.0.1:0")
    node = await start_node(mode=mode, scope=scope, http_listen="127.0.0.1:0")
    result = await node.store.apply(envelope(snap, key))
    assert result.accepted, result.reason
    return node


def records(node: DataPlaneNode, correlation_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in read_records(log_path(node.settings.data_dir, node.settings.node_id))
        if r["correlation_id"] == correlation_id
    ]


def one_record(node: DataPlaneNode, correlation_id: str) -> dict[str, Any]:
    (record,) = records(node, correlation_id)
    return record


def evidence_bytes(node: DataPlaneNode) -> bytes:
    return b"".join(p.read_bytes() for p in node.settings.data_dir.rglob("*") if p.is_file())


async def refusal(
    stub: infer_pb2_grpc.InferServiceStub, request: infer_pb2.InferRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Infer(request, metadata=AUTH, timeout=10)
    return refused.value


@pytest.fixture
async def stub_for() -> AsyncIterator[Any]:
    channels: list[grpc.aio.Channel] = []

    def make(node: DataPlaneNode) -> infer_pb2_grpc.InferServiceStub:
        channel = grpc.aio.insecure_channel(node.address)
        channels.append(channel)
        return infer_pb2_grpc.InferServiceStub(channel)

    yield make
    for channel in channels:
        await channel.close()


# ---- masking: the upstream sees placeholders, the caller its values, nothing keeps them ----


async def test_masked_values_reach_the_caller_and_nothing_else(
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    profile = {"input": {"rules": [rule("mask-email", "email", "mask"), rule("mask-iban", "iban", "mask")]}}
    node = await serving(
        start_node, governed(simulator.base_url, profile, full_evidence=True), signing_key, tmp_path
    )
    stub = stub_for(node)
    prompt = f"Write to {EMAIL} about the transfer from {IBAN}; copy {EMAIL}."

    response = await stub.Infer(chat(prompt, correlation_id="mask-unary"), metadata=AUTH, timeout=10)
    text = "".join(p.text for p in response.message.content)
    # The simulator answers with the prompt it received: restored for the caller ...
    assert text == f"Simulated answer to: {prompt}"
    # ... while what it received carried placeholders only.
    sent = json.dumps(simulator.stats("sim-fast").last_request)
    assert "[EMAIL_1]" in sent
    assert "[IBAN_1]" in sent
    assert EMAIL not in sent
    assert IBAN not in sent

    events = stub.InferStream(chat(prompt, correlation_id="mask-stream"), metadata=AUTH, timeout=10)
    streamed = "".join([e.delta.text async for e in events if e.WhichOneof("event") == "delta"])
    assert streamed == f"Simulated answer to: {prompt}"

    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="sim-fast",
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"x-request-id": "mask-http"},
        )
    assert completion.choices[0].message.content == f"Simulated answer to: {prompt}"

    for correlation_id in ("mask-unary", "mask-stream", "mask-http"):
        record = one_record(node, correlation_id)
        actions = {a["rule"]: a for a in record["governance"]}
        assert actions["mask-email"]["count"] == 2
        assert actions["mask-iban"]["count"] == 1
        # The tenant's evidence keeps content: with the values masked, request and answer.
        assert "[EMAIL_1]" in json.dumps(record["content"])
    stored = evidence_bytes(node)
    assert EMAIL.encode() not in stored
    assert IBAN.encode() not in stored
    assert EMAIL not in caplog.text
    assert IBAN not in caplog.text


# ---- classify: a detected IBAN routes to the model certified for confidential data ----


CLASSIFY = {"input": {"rules": [rule("iban-confidential", "iban", "classify", data_class="confidential")]}}
POLICY = {"default_model": "sim-fast", "allowed_models": ["sim-fast", "sim-smart"]}


@pytest.mark.parametrize("mode", [DeploymentMode.CLOUD, DeploymentMode.ON_PREM, DeploymentMode.AIR_GAPPED])
async def test_a_classified_request_goes_only_to_a_certified_model_on_every_mode(
    mode: DeploymentMode,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,
) -> None:
    snap = governed(simulator.base_url, CLASSIFY, certified=True, policy=POLICY)
    node = await serving(start_node, snap, signing_key, tmp_path, mode)
    stub = stub_for(node)
    await stub.Infer(chat(f"pay {IBAN}", correlation_id="cls-iban"), metadata=AUTH, timeout=10)
    await stub.Infer(chat("no account here", correlation_id="cls-none"), metadata=AUTH, timeout=10)
    classified = one_record(node, "cls-iban")
    assert classified["routing"]["served_by"]["model"] == "sim-smart"
    assert ["sim-fast", "not certified for confidential data"] in classified["routing"]["dropped"]
    assert classified["governance"][0]["data_class"] == "confidential"
    assert one_record(node, "cls-none")["routing"]["served_by"]["model"] == "sim-fast"


async def test_a_classified_request_without_a_certified_model_is_refused_naming_the_rule(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path, stub_for: Any
) -> None:
    snap = governed(simulator.base_url, CLASSIFY, certified=False, policy=POLICY)
    node = await serving(start_node, snap, signing_key, tmp_path, DeploymentMode.AIR_GAPPED)
    refused = await refusal(stub_for(node), chat(f"pay {IBAN}", correlation_id="cls-refused"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "iban-confidential" in (refused.details() or "")
    assert IBAN not in (refused.details() or "")
    record = one_record(node, "cls-refused")
    assert record["outcome"]["error"] == "NotCertified"
    assert [a["rule"] for a in record["governance"]] == ["iban-confidential"]
    assert simulator.stats("sim-fast").total == simulator.stats("sim-smart").total == 0


# ---- refusals before the model: limits and input rules ----


async def test_refusals_of_limits_and_input_rules_come_before_any_upstream_call(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path, stub_for: Any
) -> None:
    profile = {
        "limits": {"max_messages": 2, "max_characters": 200},
        "input": {
            "rules": [
                rule(
                    "no-codename", "terms", "block", status="invalid_argument", options={"terms": ["falcon"]}
                )
            ]
        },
    }
    node = await serving(start_node, governed(simulator.base_url, profile), signing_key, tmp_path)
    stub = stub_for(node)
    three = chat("one", correlation_id="lim-messages")
    for text in ("two", "three"):
        three.messages.add(role=infer_pb2.ROLE_USER).content.add(text=text)
    cases = [
        (three, "lim-messages", "max_messages", "limits.max_messages"),
        (chat("x" * 201, correlation_id="lim-chars"), "lim-chars", "max_characters", "limits.max_characters"),
        (chat("about Falcon", correlation_id="in-block"), "in-block", "no-codename", "no-codename"),
    ]
    for request, correlation_id, named, rule_name in cases:
        refused = await refusal(stub, request)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert named in (refused.details() or "")
        record = one_record(node, correlation_id)
        assert [a["rule"] for a in record["governance"]] == [rule_name]
        assert record["routing"] is None
    assert simulator.stats("sim-fast").total == 0
    # And the node keeps serving.
    await stub.Infer(chat("fine", correlation_id="after"), metadata=AUTH, timeout=10)


# ---- answers: output rules and the JSON schema contract, against a scripted upstream ----


class Scripted:
    """An OpenAI-compatible upstream answering per model from a script: a whole answer, or
    a stream of the given pieces; counts the requests each model received."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.pieces: list[str] = []
        self.pieces_for: dict[str, list[str]] = {}
        """A model's own stream, instead of ``pieces``."""
        self.calls: dict[str, int] = {}
        self.base_url = ""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        self.calls[model] = self.calls.get(model, 0) + 1
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.answers[model]},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                }
            )
        pieces = self.pieces_for.get(model, self.pieces)
        return await sse(request, model, [({"content": piece}, None) for piece in pieces])


async def sse(
    request: web.Request, model: str, deltas: list[tuple[dict[str, Any], str | None]], pace: float = 0.0
) -> web.StreamResponse:
    """An OpenAI-style event stream: one chunk per (delta, finish_reason), then ``[DONE]``;
    ``pace`` seconds between chunks (a model's pace: the node relays each as it comes)."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for n, (delta, finish_reason) in enumerate(deltas):
        if pace and n:
            await asyncio.sleep(pace)
        event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model}
        event["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    return response


@contextlib.asynccontextmanager
async def upstream_at(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A local upstream answering ``/v1/chat/completions`` with ``handler``; yields its URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    upstream = Scripted()
    async with upstream_at(upstream.completions) as base_url:
        upstream.base_url = base_url
        yield upstream


def asks_for_age(correlation_id: str) -> infer_pb2.InferRequest:
    request = chat("how old?", correlation_id=correlation_id)
    request.response_format.type = infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA
    request.response_format.schema_name = "age"
    request.response_format.json_schema = json.dumps(SCHEMA)
    return request


RETRY_TWICE = {
    "default_model": "sim-fast",
    "allowed_models": ["sim-fast", "sim-smart"],
    "retry": {"max_attempts": 2, "attempts_per_deployment": 1},
}


@pytest.mark.parametrize("on_failure", ["error", "retry", "flag"])
async def test_an_answer_breaking_its_json_schema_gets_the_profiles_action(
    on_failure: str,
    start_node: NodeFactory,
    scripted: Scripted,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,
) -> None:
    scripted.answers = {"sim-fast": '{"age": "forty-two"}', "sim-smart": '{"age": 42}'}
    profile = {"output": {"contract": {"on_failure": on_failure}}}
    snap = governed(scripted.base_url, profile, policy=RETRY_TWICE)
    node = await serving(start_node, snap, signing_key, tmp_path)
    stub = stub_for(node)
    correlation_id = f"contract-{on_failure}"
    if on_failure == "error":
        refused = await refusal(stub, asks_for_age(correlation_id))
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "$.age" in (refused.details() or "")
        assert "forty-two" not in (refused.details() or "")
        assert scripted.calls == {"sim-fast": 1}  # no other candidate was asked
    else:
        response = await stub.Infer(asks_for_age(correlation_id), metadata=AUTH, timeout=10)
        answered = json.loads("".join(p.text for p in response.message.content))
        assert answered == ({"age": 42} if on_failure == "retry" else {"age": "forty-two"})
    record = one_record(node, correlation_id)
    (entry,) = record["governance"]
    assert (entry["rule"], entry["action"], entry["path"], entry["model"]) == (
        "contract",
        on_failure,
        "$.age",
        "sim-fast",
    )
    if on_failure == "retry":
        assert [(a["model"], a["outcome"]) for a in record["routing"]["attempts"]] == [
            ("sim-fast", "output_contract"),
            ("sim-smart", "ok"),
        ]
    assert "forty-two" not in json.dumps(record)


@pytest.mark.parametrize("on_failure", ["error", "flag"])
async def test_a_streamed_answer_breaking_its_json_schema_is_checked_once_sent(
    on_failure: str,
    start_node: NodeFactory,
    scripted: Scripted,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,
) -> None:
    scripted.pieces = ['{"age": ', '"forty', '-two"}']
    profile = {"output": {"contract": {"on_failure": on_failure}}}
    node = await serving(
        start_node, governed(scripted.base_url, profile, policy=RETRY_TWICE), signing_key, tmp_path
    )
    correlation_id = f"stream-contract-{on_failure}"
    events = stub_for(node).InferStream(asks_for_age(correlation_id), metadata=AUTH, timeout=10)
    received: list[Any] = []

    async def read() -> None:
        async for event in events:
            received.append(event)

    if on_failure == "flag":
        await read()
        assert received[-1].WhichOneof("event") == "end"
    else:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read()
        assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "$.age" in (ended.value.details() or "")
    # Sent as it came: the answer was out before it could be checked.
    assert "".join(e.delta.text for e in received if e.WhichOneof("event") == "delta") == "".join(
        scripted.pieces
    )
    (entry,) = one_record(node, correlation_id)["governance"]
    assert (entry["rule"], entry["path"]) == ("contract", "$.age")
    assert entry["action"] == on_failure
    assert scripted.calls == {"sim-fast": 1}


async def test_a_streamed_answer_under_a_retry_contract_is_held_until_one_meets_it(
    start_node: NodeFactory, scripted: Scripted, signing_key: Ed25519PrivateKey, tmp_path: Path, stub_for: Any
) -> None:
    scripted.pieces_for = {"sim-fast": ['{"age": ', '"forty', '-two"}'], "sim-smart": ['{"age"', ": 42}"]}
    profile = {"output": {"contract": {"on_failure": "retry"}}}
    node = await serving(
        start_node, governed(scripted.base_url, profile, policy=RETRY_TWICE), signing_key, tmp_path
    )
    events = stub_for(node).InferStream(asks_for_age("held-retry"), metadata=AUTH, timeout=10)
    received = [event async for event in events]
    kinds = [e.WhichOneof("event") for e in received]
    assert (kinds[0], kinds[-1]) == ("start", "end")
    # Only the second candidate's answer, released once it met the contract; nothing of the
    # first. (Held whole, its chunks are ready together: the gRPC door sends them as one delta.)
    assert "".join(e.delta.text for e in received if e.WhichOneof("event") == "delta") == '{"age": 42}'
    assert received[0].start.model == "sim-smart"
    record = one_record(node, "held-retry")
    (entry,) = record["governance"]
    assert (entry["rule"], entry["action"], entry["path"], entry["model"]) == (
        "contract",
        "retry",
        "$.age",
        "sim-fast",
    )
    assert [(a["model"], a["outcome"]) for a in record["routing"]["attempts"]] == [
        ("sim-fast", "output_contract"),
        ("sim-smart", "ok"),
    ]
    assert "forty" not in json.dumps(record)

    # No candidate meets it: the stream ends with the error, nothing of an answer sent.
    scripted.pieces_for["sim-smart"] = ['{"age": null}']
    events = stub_for(node).InferStream(asks_for_age("held-none"), metadata=AUTH, timeout=10)
    received = []

    async def read() -> None:
        async for event in events:
            received.append(event)

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read()
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [e for e in received if e.WhichOneof("event") == "delta"] == []
    entries = one_record(node, "held-none")["governance"]
    assert [(e["model"], e["action"]) for e in entries] == [("sim-fast", "retry"), ("sim-smart", "retry")]


async def test_an_output_block_refuses_the_answer_with_one_record(
    start_node: NodeFactory, scripted: Scripted, signing_key: Ed25519PrivateKey, tmp_path: Path, stub_for: Any
) -> None:
    scripted.answers = {"sim-fast": "The codename is falcon."}
    profile = {"output": {"rules": [rule("no-codename", "terms", "block", options={"terms": ["falcon"]})]}}
    node = await serving(start_node, governed(scripted.base_url, profile), signing_key, tmp_path)
    refused = await refusal(stub_for(node), chat("codename?", correlation_id="out-block"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no-codename" in (refused.details() or "")
    record = one_record(node, "out-block")
    assert [(a["stage"], a["rule"]) for a in record["governance"]] == [("output", "no-codename")]


# ---- streams: a blocked term in chunk k ends the stream by chunk k + window ----

WINDOW = 32


async def test_a_blocked_term_mid_stream_ends_it_within_the_window_on_both_doors(
    start_node: NodeFactory, scripted: Scripted, signing_key: Ed25519PrivateKey, tmp_path: Path, stub_for: Any
) -> None:
    k = 30
    scripted.pieces = [f"w{i:02d} " for i in range(80)]
    scripted.pieces[k] = "falcon "
    profile = {
        "output": {
            "window": WINDOW,
            "rules": [rule("no-codename", "terms", "block", options={"terms": ["falcon"]})],
        }
    }
    node = await serving(start_node, governed(scripted.base_url, profile), signing_key, tmp_path)
    before = "".join(scripted.pieces[:k])

    ended, sent = await refused_stream(stub_for(node), "stream-grpc")
    assert ended.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no-codename" in (ended.details() or "")
    assert "falcon" not in sent
    assert before.startswith(sent)
    assert len(before) - len(sent) <= WINDOW  # held back at most the window

    body = await streamed_over_http(node, "stream-http")
    assert "event: error" in body
    assert "no-codename" in body
    assert "falcon" not in body.replace("no-codename", "")

    for correlation_id in ("stream-grpc", "stream-http"):
        record = one_record(node, correlation_id)
        assert record["outcome"]["code"] == "PERMISSION_DENIED"
        (entry,) = record["governance"]
        assert entry["rule"] == "no-codename"
        assert entry["positions"][0]["chunk"] == k
        assert entry["positions"][0]["start"] == len(before)
        assert k <= entry["ended_at_chunk"] <= k + WINDOW


# ---- every text the provider receives is governed, not only message content ----


def _in_tool_description(request: infer_pb2.InferRequest, text: str) -> None:
    request.tools.add(
        name="lookup", description=f"Look up {text}", parameters_json_schema='{"type": "object"}'
    )


def _in_tool_schema(request: infer_pb2.InferRequest, text: str) -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string", "description": f"about {text}"}}}
    request.tools.add(name="search", parameters_json_schema=json.dumps(schema))


def _in_response_schema(request: infer_pb2.InferRequest, text: str) -> None:
    request.response_format.type = infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA
    request.response_format.json_schema = json.dumps(
        {"type": "object", "properties": {"a": {"type": "string", "enum": [text]}}}
    )


def _in_response_description(request: infer_pb2.InferRequest, text: str) -> None:
    request.response_format.type = infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA
    request.response_format.json_schema = json.dumps(SCHEMA)
    request.response_format.description = f"the age of {text}"


def _in_message_name(request: infer_pb2.InferRequest, text: str) -> None:
    request.messages[0].name = text


def _in_stop_sequence(request: infer_pb2.InferRequest, text: str) -> None:
    request.params.stop.append(text)


HIDDEN_IN = {
    "tools[0].description": _in_tool_description,
    "tools[0].parameters_json_schema": _in_tool_schema,
    "response_format.json_schema": _in_response_schema,
    "response_format.json_schema.description": _in_response_description,
    "messages[0].name": _in_message_name,
    "params.stop[0]": _in_stop_sequence,
}


async def test_a_blocked_term_outside_the_message_content_is_refused_before_any_upstream_call(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path, stub_for: Any
) -> None:
    # Tool definitions, schemas, message names and stop sequences all go to the provider: a
    # rule that read message content only was bypassed by moving the term into one of them.
    profile = {
        "input": {
            "rules": [
                rule(
                    "no-codename", "terms", "block", status="invalid_argument", options={"terms": ["falcon"]}
                )
            ]
        }
    }
    node = await serving(start_node, governed(simulator.base_url, profile), signing_key, tmp_path)
    stub = stub_for(node)
    for field, hide in HIDDEN_IN.items():
        request = chat("hello", correlation_id=f"hidden-{field}".replace("[", "-").replace("]", ""))
        hide(request, "Falcon")
        refused = await refusal(stub, request)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, refused.details())
        assert "no-codename" in (refused.details() or ""), field
        (action,) = one_record(node, request.correlation_id)["governance"]
        assert action["rule"] == "no-codename"
        assert [p["field"] for p in action["positions"]] == [field]
    assert simulator.stats("sim-fast").total == 0


async def test_a_masked_value_in_a_tool_definition_never_reaches_the_upstream(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path, stub_for: Any
) -> None:
    profile = {"input": {"rules": [rule("mask-email", "email", "mask")]}}
    node = await serving(start_node, governed(simulator.base_url, profile), signing_key, tmp_path)
    stub = stub_for(node)
    request = chat(f"Write to {EMAIL}", correlation_id="mask-tool")
    _in_tool_description(request, EMAIL)
    _in_tool_schema(request, EMAIL)
    request.messages[0].name = EMAIL
    response = await stub.Infer(request, metadata=AUTH, timeout=10)
    assert EMAIL in "".join(p.text for p in response.message.content)
    sent = json.dumps(simulator.stats("sim-fast").last_request)
    assert "[EMAIL_1]" in sent
    assert EMAIL not in sent
    (action,) = one_record(node, "mask-tool")["governance"]
    assert action["count"] == 4
    assert EMAIL.encode() not in evidence_bytes(node)
