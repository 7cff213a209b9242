"""The official ``openai`` SDK, unchanged but for ``base_url`` and ``api_key``, against a real
node's HTTP front door (the simulator upstream speaks OpenAI's wire format)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Behaviour
from tests.dataplane.conftest import API_KEY, AUTH, EXPIRED_KEY, NodeFactory, envelope, snapshot
from tests.dataplane.upstream.rawserver import Peer, RawServer
from tests.dataplane.upstream.rawserver import answer as raw_answer
from tests.helpers import eventually


@pytest.fixture
async def http_node(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    node = await start_node(http_listen="127.0.0.1:0")
    snap = snapshot(1, simulator.base_url)
    for model in snap.models:
        if model.alias == "sim-fast":
            model.capabilities.append(common_pb2.CAPABILITY_JSON_SCHEMA)
    result = await node.store.apply(envelope(snap, signing_key))
    assert result.accepted, result.reason
    return node


@pytest.fixture
async def client(http_node: DataPlaneNode) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=f"http://{http_node.http_address}/v1", api_key=API_KEY, max_retries=0)
    async with sdk:
        yield sdk


@contextlib.asynccontextmanager
async def _sdk_over(
    upstream: RawServer, start_node: NodeFactory, signing_key: Ed25519PrivateKey
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK on a node whose one provider (OpenAI-compatible) is ``upstream``."""
    node = await start_node(http_listen="127.0.0.1:0")
    snap = snapshot(1, upstream.url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as sdk:
        yield sdk


def records(node: DataPlaneNode) -> list[dict[str, Any]]:
    return list(read_records(log_path(node.settings.data_dir, node.settings.node_id)))


async def test_chat_answers_in_openai_shape_with_request_and_evidence_ids(
    client: openai.AsyncOpenAI, http_node: DataPlaneNode
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="sim-fast",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        max_tokens=50,
        extra_headers={"x-request-id": "req-http-1"},
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "sim-fast"
    assert completion.choices[0].message.role == "assistant"
    assert "hello there" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert raw.headers["x-request-id"] == "req-http-1"
    evidence_id = raw.headers["x-evidence-id"]
    assert completion.id == f"chatcmpl-{evidence_id}"
    await eventually(lambda: any(r["record_id"] == evidence_id for r in records(http_node)))
    (record,) = [r for r in records(http_node) if r["record_id"] == evidence_id]
    assert record["correlation_id"] == "req-http-1"
    assert record["outcome"]["code"] == "OK"
    assert record["routing"]["served_by"]["model"] == "sim-fast"


async def test_model_auto_lets_the_policy_choose(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "sim-fast"  # the policy's default model


async def test_streaming_with_usage_ends_with_a_usage_chunk(
    client: openai.AsyncOpenAI, http_node: DataPlaneNode
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="sim-fast",
        messages=[{"role": "user", "content": "stream me a few words please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    evidence_id = raw.headers["x-evidence-id"]
    text, finish, usage, ids = [], None, None, set()
    async for chunk in raw.parse():
        ids.add(chunk.id)
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert "stream me a few words please" in "".join(text)
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens > 0
    assert ids == {f"chatcmpl-{evidence_id}"}
    await eventually(lambda: any(r["record_id"] == evidence_id for r in records(http_node)))
    (record,) = [r for r in records(http_node) if r["record_id"] == evidence_id]
    assert record["kind"] == "stream"
    assert record["usage"]["output_tokens"] == usage.completion_tokens


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


async def test_tool_calls_round_trip(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "use the get_weather tool for Paris"}]
    first = await client.chat.completions.create(model="sim-fast", messages=messages, tools=[WEATHER])
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    second = await client.chat.completions.create(model="sim-fast", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert "sunny, 21 C" in (second.choices[0].message.content or "")


async def test_streamed_tool_calls_arrive_as_openai_deltas(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="sim-fast",
        messages=[{"role": "user", "content": "use the get_weather tool for Oslo"}],
        tools=[WEATHER],
        stream=True,
    )
    name, arguments, finish = "", "", None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            assert call.index == 0
            name += (call.function.name or "") if call.function else ""
            arguments += (call.function.arguments or "") if call.function else ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert name == "get_weather"
    assert "city" in json.loads(arguments)
    assert finish == "tool_calls"


async def test_json_schema_response_format(client: openai.AsyncOpenAI, simulator: Any) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    await client.chat.completions.create(
        model="sim-fast",
        messages=[{"role": "user", "content": "reply in json"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema, "strict": True},
        },
    )
    sent = simulator.stats("sim-fast").last_request
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == schema


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings(client: openai.AsyncOpenAI, encoding: str) -> None:
    result = await client.embeddings.create(
        model="sim-embed",
        input=["one", "two"],
        encoding_format=encoding,  # type: ignore[arg-type]
    )
    assert [e.index for e in result.data] == [0, 1]
    if encoding == "float":
        assert all(isinstance(x, float) for x in result.data[0].embedding)
        assert len(result.data[0].embedding) > 1
    else:
        assert isinstance(result.data[0].embedding, str)
    assert result.model == "sim-embed"


async def test_models_lists_what_the_callers_policy_allows(client: openai.AsyncOpenAI) -> None:
    listed = [m.id async for m in client.models.list()]
    assert listed == ["sim-embed", "sim-fast", "sim-smart"]  # not sim-secret: not allowed for acme


async def test_each_error_class_raises_the_sdks_own_exception(
    client: openai.AsyncOpenAI, http_node: DataPlaneNode, simulator: Any
) -> None:
    hi = [{"role": "user", "content": "hi"}]
    async with openai.AsyncOpenAI(
        base_url=f"http://{http_node.http_address}/v1", api_key="sbx_unknown", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError) as auth:
            await stranger.chat.completions.create(model="sim-fast", messages=hi)  # type: ignore[arg-type]
    assert auth.value.status_code == 401
    async with openai.AsyncOpenAI(
        base_url=f"http://{http_node.http_address}/v1", api_key=EXPIRED_KEY, max_retries=0
    ) as expired:
        with pytest.raises(openai.AuthenticationError):
            await expired.chat.completions.create(model="sim-fast", messages=hi)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="sim-secret", messages=hi)  # type: ignore[arg-type]
    assert "unknown model" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="sim-fast", messages=hi, temperature=7.5)  # type: ignore[arg-type]
    assert "temperature" in bad.value.message
    with pytest.raises(openai.BadRequestError) as unknown_field:
        await client.chat.completions.create(
            model="sim-fast",
            messages=hi,  # type: ignore[arg-type]
            extra_body={"temprature": 0.5},
        )
    assert unknown_field.value.body["param"] == "temprature"  # type: ignore[index]

    simulator.set_behaviour("sim-fast", Behaviour(fail_status=429, retry_after=7))
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="sim-fast", messages=hi)  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.code == "rate_limit_exceeded"
    # Every attempt failing one way (here the only one) is refused with OpenAI's code for
    # it: clients trim a conversation on context_length_exceeded. It came back null.
    overflow = {"message": "maximum context length exceeded", "type": "invalid_request_error"}
    simulator.set_behaviour(
        "sim-fast",
        Behaviour(fail_status=400, error_body={"error": {**overflow, "code": "context_length_exceeded"}}),
    )
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as too_long:
            await client.chat.completions.create(model="sim-fast", messages=hi, stream=stream)  # type: ignore[call-overload]
        assert too_long.value.code == "context_length_exceeded"
    simulator.set_behaviour("sim-fast", Behaviour(fail_status=500))
    with pytest.raises(openai.InternalServerError) as upstream:
        await client.chat.completions.create(model="sim-fast", messages=hi)  # type: ignore[arg-type]
    assert upstream.value.status_code == 502
    assert "retry-after" not in upstream.value.response.headers
    # An upstream that says when it frees up: the caller is told too (it was dropped, and
    # the SDK retried the 502 at once).
    simulator.set_behaviour("sim-fast", Behaviour(fail_status=503, retry_after=4))
    with pytest.raises(openai.InternalServerError) as busy:
        await client.chat.completions.create(model="sim-fast", messages=hi)  # type: ignore[arg-type]
    assert busy.value.status_code == 502
    assert busy.value.response.headers["retry-after"] == "4"
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=5000))
    async with openai.AsyncOpenAI(
        base_url=f"http://{http_node.http_address}/v1", api_key=API_KEY, max_retries=0, timeout=0.5
    ) as impatient:
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(model="sim-fast", messages=hi)  # type: ignore[arg-type]
    simulator.set_behaviour("sim-fast", Behaviour())


async def test_the_same_request_routes_and_records_alike_over_http_and_grpc(
    client: openai.AsyncOpenAI, http_node: DataPlaneNode
) -> None:
    over_http = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "same request"}], max_tokens=40, temperature=0.2
    )
    request = infer_pb2.InferRequest(params=infer_pb2.GenerationParams(max_output_tokens=40, temperature=0.2))
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="same request")
    async with grpc.aio.insecure_channel(http_node.address) as channel:
        over_grpc = await infer_pb2_grpc.InferServiceStub(channel).Infer(request, metadata=AUTH, timeout=10)
    await recorded_alike(http_node, over_http.headers["x-evidence-id"], over_grpc.evidence_id)


RECORDED_ALIKE = (
    "kind",
    "tenant_id",
    "api_key_id",
    "caller",
    "snapshot",
    "policy",
    "routing",
    "usage",
    "cost",
)
"""What the evidence of one request says the same whichever door it came through."""


async def recorded_alike(node: DataPlaneNode, http_id: str, grpc_id: str, *more: str) -> None:
    """The records ``http_id`` and ``grpc_id`` of ``node`` say the same (``RECORDED_ALIKE``,
    then ``more``, and the answer's digest), but for how long the upstream took."""
    await eventually(lambda: {http_id, grpc_id} <= {r["record_id"] for r in records(node)})
    by_id = {r["record_id"]: r for r in records(node)}
    a, b = by_id[http_id], by_id[grpc_id]
    for record in (a, b):
        for attempt in record["routing"]["attempts"]:
            attempt.pop("duration_ms")  # the one thing that differs: how long the upstream took
    for field in (*RECORDED_ALIKE, *more):
        assert a[field] == b[field], field
    assert a["response_sha256"] == b["response_sha256"]


async def test_a_chat_is_not_routed_to_an_embeddings_model(
    client: openai.AsyncOpenAI, http_node: DataPlaneNode, simulator: Any
) -> None:
    # sim-embed declares embeddings only. A chat named it and was sent to it: a real
    # provider refuses that ("not a chat model", a 404), which the deployment's circuit
    # breaker counts, so one caller's chats could open the breaker its embeddings share.
    hi = [{"role": "user", "content": "hi"}]
    for stream in (False, True):
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            await client.chat.completions.create(model="sim-embed", messages=hi, stream=stream)  # type: ignore[call-overload]
        assert "lacks capability 'chat'" in refused.value.message
    assert simulator.stats("sim-embed").total == 0
    embedded = await client.embeddings.create(model="sim-embed", input="still served")
    assert len(embedded.data) == 1


@pytest.mark.parametrize("value", [1e39, -1e39, "nan", "inf"], ids=["huge", "-huge", "nan", "inf"])
async def test_an_embedding_no_float32_holds_is_a_bad_upstream_answer_not_a_500(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey, value: Any
) -> None:
    # The SDK asks for base64 (little-endian float32) by default: a value beyond float32's
    # range from the upstream made packing it raise, a 500 "internal error" for an answer
    # the evidence recorded as served; NaN and infinity reached the caller as values.
    async def embeds(server: RawServer, peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            server.requests.append(request)
            body = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, value]}],
                    "model": "sim-embed", "usage": {"prompt_tokens": 1, "total_tokens": 1}}  # fmt: skip
            await peer.send(raw_answer(json.dumps(body).encode()))

    async with RawServer(embeds) as upstream, _sdk_over(upstream, start_node, signing_key) as sdk:
        with pytest.raises(openai.InternalServerError) as bad:
            await sdk.embeddings.create(model="sim-embed", input="x")
        assert bad.value.status_code == 502
        assert "not a finite float32" in bad.value.message
        assert upstream.requests
        assert [m.id async for m in sdk.models.list()]  # the node keeps serving


async def test_the_sdks_current_request_fields_are_taken_or_refused_by_name(
    client: openai.AsyncOpenAI, simulator: Any
) -> None:
    # safety_identifier and prompt_cache_key replace user in OpenAI's API: user was taken,
    # they were refused as "unrecognized request argument"; other current fields were
    # refused as unrecognized rather than as not supported.
    hi: Any = [{"role": "user", "content": "hi"}]
    served = await client.chat.completions.create(
        model="sim-fast", messages=hi, safety_identifier="hashed-user-1", prompt_cache_key="conversation-1"
    )
    assert served.choices[0].message.content
    sent = simulator.stats("sim-fast").last_request
    assert "safety_identifier" not in sent
    assert "prompt_cache_key" not in sent
    with pytest.raises(openai.BadRequestError) as typed:
        await client.chat.completions.create(
            model="sim-fast", messages=hi, extra_body={"safety_identifier": 5}
        )
    assert typed.value.body["param"] == "safety_identifier"  # type: ignore[index]
    assert "must be a string" in typed.value.message
    with pytest.raises(openai.BadRequestError) as unsupported:
        await client.chat.completions.create(model="sim-fast", messages=hi, verbosity="low")
    assert unsupported.value.body["param"] == "verbosity"  # type: ignore[index]
    assert "not supported by Signalbox" in unsupported.value.message


async def test_a_stream_is_not_routed_to_a_model_that_cannot_stream(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    # The registry's streaming capability was never asked for: a stream went to a model
    # declared unable to stream, whose provider then refuses it or answers it whole.
    node = await start_node(http_listen="127.0.0.1:0")
    snap = snapshot(1, simulator.base_url)
    (smart,) = [m for m in snap.models if m.alias == "sim-smart"]
    smart.capabilities.remove(common_pb2.CAPABILITY_STREAMING)
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    hi: Any = [{"role": "user", "content": "hi"}]
    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as sdk:
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            await sdk.chat.completions.create(model="sim-smart", messages=hi, stream=True)
        assert "lacks capability 'streaming'" in refused.value.message
        assert simulator.stats("sim-smart").total == 0
        whole = await sdk.chat.completions.create(model="sim-smart", messages=hi)
        assert whole.choices[0].message.content


async def test_an_assistant_refusal_carried_in_the_conversation_is_sent_as_what_it_said(
    client: openai.AsyncOpenAI, simulator: Any
) -> None:
    # OpenAI answers a declined request with content null and the words in refusal (or a
    # refusal part): a conversation that carried such a message on was refused with
    # "content must not be empty" / "must be text".
    declined = "I can't help with that."
    for said in (
        {"role": "assistant", "content": None, "refusal": declined},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": declined}]},
    ):
        messages: Any = [
            {"role": "user", "content": "do a bad thing"},
            said,
            {"role": "user", "content": "hi then"},
        ]
        answer = await client.chat.completions.create(model="sim-fast", messages=messages)
        assert answer.choices[0].message.content
        sent = simulator.stats("sim-fast").last_request["messages"]
        assert sent[1] == {"role": "assistant", "content": declined}
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(
            model="sim-fast",
            messages=[
                {"role": "assistant", "content": [{"type": "audio"}]},
                {"role": "user", "content": "x"},
            ],  # type: ignore[list-item]
        )
    assert bad.value.body["param"] == "messages[0].content[0].type"  # type: ignore[index]
    assert "must be text or refusal" in bad.value.message


async def test_a_message_key_openai_does_not_define_is_refused_by_name(
    client: openai.AsyncOpenAI, simulator: Any
) -> None:
    # Unknown keys inside a message were ignored: a misspelt one silently changed the
    # conversation (OpenAI answers 400), and any amount of JSON rode along unread.
    first = await client.chat.completions.create(
        model="sim-fast", messages=[{"role": "user", "content": "hi", "name": "ann"}]
    )
    # Every key the SDK's own answer message holds (null audio, function_call, annotations
    # and tool_calls included), and an answer's annotations as OpenAI sends them, are taken.
    carried = first.choices[0].message.model_dump()
    assert {"annotations", "audio", "function_call", "refusal", "tool_calls"} <= carried.keys()
    cited = {"role": "assistant", "content": "see", "refusal": None, "annotations": [
        {"type": "url_citation", "url_citation": {"url": "https://example.com", "title": "t",
                                                  "start_index": 0, "end_index": 3}}]}  # fmt: skip
    messages: Any = [
        {"role": "system", "content": "be brief", "name": "rules"},
        {"role": "user", "content": "hi", "name": "ann"},
        carried,
        cited,
        {"role": "user", "content": [{"type": "text", "text": "and?"}]},
    ]
    served = await client.chat.completions.create(model="sim-fast", messages=messages)
    assert served.choices[0].message.content
    sent = simulator.stats("sim-fast").last_request["messages"]
    assert all("annotations" not in m for m in sent)
    hi = {"role": "user", "content": "hi"}
    cases = [
        ({**hi, "tool_call_ids": "c1"}, "messages[0].tool_call_ids", "unrecognized request argument"),
        ({**hi, "cache_control": {"type": "ephemeral"}}, "messages[0].cache_control", "unrecognized"),
        ({**hi, "\x00" * 10_000: 1}, "messages[0]." + repr("\x00" * 64) + "...", "unrecognized"),
        ({"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
         "messages[0].function_call", "is not supported by Signalbox"),
        ({"role": "assistant", "content": None, "audio": {"id": "audio_1"}},
         "messages[0].audio", "is not supported by Signalbox"),
        ({"role": "assistant", "content": "x", "annotations": "cited"}, "messages[0].annotations",
         "must be an array"),
    ]  # fmt: skip
    for message, param, says in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="sim-fast", messages=[message, hi])  # type: ignore[list-item]
        assert refused.value.body["param"] == param, refused.value.body  # type: ignore[index]
        assert says in refused.value.message


async def test_usage_details_are_answered_as_openai_answers_them(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey
) -> None:
    # Answers carried prompt_tokens_details.cached_tokens and nothing of
    # completion_tokens_details: a reasoning model's reasoning tokens, which its provider
    # reports and the caller pays for as output, were lost on the way.
    async def reasons(server: RawServer, peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            server.requests.append(request)
            body = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "sim-fast",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40,
                              "prompt_tokens_details": {"cached_tokens": 4},
                              "completion_tokens_details": {"reasoning_tokens": 28}}}  # fmt: skip
            await peer.send(raw_answer(json.dumps(body).encode()))

    hi: Any = [{"role": "user", "content": "hi"}]
    async with RawServer(reasons) as upstream, _sdk_over(upstream, start_node, signing_key) as sdk:
        usage = (await sdk.chat.completions.create(model="sim-fast", messages=hi)).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 30, 40)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 28


async def test_usage_details_are_0_where_the_provider_reports_none(client: openai.AsyncOpenAI) -> None:
    # As OpenAI answers for a model that does not reason; in a stream's usage chunk too.
    hi: Any = [{"role": "user", "content": "hi"}]
    stream = await client.chat.completions.create(
        model="sim-fast", messages=hi, stream=True, stream_options={"include_usage": True}
    )
    reports = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert len(reports) == 1
    details = reports[0].completion_tokens_details
    assert details is not None
    assert (details.reasoning_tokens, details.audio_tokens) == (0, 0)
