"""Mistral adapter: OpenAI-shaped, with flat errors, 9-character tool ids and its own field names."""

from __future__ import annotations

import re

import pytest

from dataplane.chat import EmbedRequest, FinishReason, Usage
from dataplane.errors import (
    ContextTooLong,
    ProviderError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamBadRequest,
    UpstreamUnavailable,
)
from dataplane.providers.base import ProviderAdapter
from dataplane.providers.mistral import mistral_tool_id
from dataplane.upstream import UpstreamClient

from .canned import openai_chunk, openai_completion
from .fakes import FakeUpstream, json_reply, sse_event, sse_reply
from .samples import ASK_WEATHER, HELLO, PARIS_ARGS, TOOL_ROUND_TRIP
from .streams import CREDENTIAL, assemble, drain, make_adapter


def mistral(upstream: FakeUpstream, client: UpstreamClient) -> ProviderAdapter:
    return make_adapter("mistral", upstream.base_url + "/v1", client)


def test_tool_ids_are_rewritten_stably_to_nine_alphanumerics() -> None:
    for original in ("call_abc123", "toolu_01XYZ", "x"):
        rewritten = mistral_tool_id(original)
        assert re.fullmatch(r"[a-zA-Z0-9]{9}", rewritten)
        assert mistral_tool_id(original) == rewritten
    assert mistral_tool_id("call_abc123") != mistral_tool_id("toolu_01XYZ")
    assert mistral_tool_id("D681PevKs") == "D681PevKs"


async def test_request_fields_and_id_rewriting(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(openai_completion("ok")))
    await mistral(upstream, client).complete("mistral-large", TOOL_ROUND_TRIP, timeout=5)
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {CREDENTIAL}"
    body = sent.json
    assert body["max_tokens"] == 100
    assert body["random_seed"] == 7
    assert "seed" not in body
    assert "max_completion_tokens" not in body
    assert body["tool_choice"] == "any"
    assert body["messages"][1] == {"role": "system", "content": "Answer in English."}
    paris, rome = body["messages"][3]["tool_calls"]
    assert paris["id"] == mistral_tool_id("call_abc123")
    assert rome["id"] == mistral_tool_id("toolu_01XYZ")
    assert body["messages"][4]["tool_call_id"] == paris["id"]
    assert body["messages"][5]["tool_call_id"] == rome["id"]


async def test_echoed_rewritten_ids_map_back(upstream: FakeUpstream, client: UpstreamClient) -> None:
    adapter = mistral(upstream, client)
    echoed = mistral_tool_id("call_abc123")
    upstream.enqueue(
        json_reply(openai_completion("ok")),
        json_reply(
            openai_completion(
                None, tool_calls=[(echoed, "get_weather", PARIS_ARGS)], finish_reason="tool_calls"
            )
        ),
    )
    await adapter.complete("mistral-large", TOOL_ROUND_TRIP, timeout=5)
    response = await adapter.complete("mistral-large", TOOL_ROUND_TRIP, timeout=5)
    assert response.message.tool_calls[0].id == "call_abc123"


async def test_an_id_another_request_sent_is_not_mapped_back(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    # One adapter serves every tenant: a hostile endpoint echoing, in B's answer, the rewritten
    # id of a call A sent must not show B A's original id.
    adapter = mistral(upstream, client)
    echoed = mistral_tool_id("call_abc123")
    call = {"id": echoed, "function": {"name": "get_weather", "arguments": PARIS_ARGS}, "index": 0}
    upstream.enqueue(
        json_reply(openai_completion("ok")),
        json_reply(
            openai_completion(
                None, tool_calls=[(echoed, "get_weather", PARIS_ARGS)], finish_reason="tool_calls"
            )
        ),
        sse_reply(
            sse_event(openai_chunk({"role": "assistant", "tool_calls": [call]}, "tool_calls")),
            sse_event("[DONE]"),
        ),
    )
    await adapter.complete("mistral-large", TOOL_ROUND_TRIP, timeout=5)  # tenant A
    response = await adapter.complete("mistral-large", ASK_WEATHER, timeout=5)  # tenant B
    assert response.message.tool_calls[0].id == echoed
    folded = assemble(await drain(adapter.stream("mistral-large", ASK_WEATHER, timeout=5)))
    assert folded.tool_calls[0]["id"] == echoed


async def test_object_arguments_are_serialized(upstream: FakeUpstream, client: UpstreamClient) -> None:
    body = openai_completion(
        None, tool_calls=[("D681PevKs", "get_weather", PARIS_ARGS)], finish_reason="tool_calls"
    )
    body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    upstream.enqueue(json_reply(body))
    response = await mistral(upstream, client).complete("mistral-large", ASK_WEATHER, timeout=5)
    assert response.message.tool_calls[0].arguments == PARIS_ARGS


async def test_stream_has_no_stream_options_and_usage_in_last_chunk(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    # Mistral: role null on later chunks, usage on the finishing chunk, whole tool calls.
    last = openai_chunk({"content": ""}, "tool_calls")
    last["usage"] = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    call = {"id": "D681PevKs", "function": {"name": "get_weather", "arguments": PARIS_ARGS}, "index": 0}
    first = {
        "id": "cmpl-1",
        "model": "mistral-large",
        "choices": [{"index": 0, "delta": {"role": "assistant"}}],
    }
    upstream.enqueue(
        sse_reply(
            sse_event(first),  # the 2023 first chunk lacked object/created
            sse_event(openai_chunk({"role": None, "content": None, "tool_calls": [call]})),
            sse_event(last),
            sse_event("[DONE]"),
        )
    )
    folded = assemble(await drain(mistral(upstream, client).stream("mistral-large", ASK_WEATHER, timeout=5)))
    assert folded.tool_calls == {0: {"id": "D681PevKs", "name": "get_weather", "arguments": PARIS_ARGS}}
    assert folded.finish_reason is FinishReason.TOOL_CALLS
    assert folded.usage == Usage(input_tokens=10, output_tokens=4)
    assert "stream_options" not in upstream.last.json


async def test_model_length_and_error_finish_reasons(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(openai_completion("cut", finish_reason="model_length")),
        json_reply(openai_completion("", finish_reason="error")),
    )
    adapter = mistral(upstream, client)
    assert (await adapter.complete("m", HELLO, timeout=5)).finish_reason is FinishReason.LENGTH
    with pytest.raises(UpstreamUnavailable):
        await adapter.complete("m", HELLO, timeout=5)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"message": "Unauthorized", "request_id": "r1"}, UpstreamAuthFailed),
        (
            429,
            {
                "object": "error",
                "message": "Requests rate limit exceeded",
                "type": "rate_limited",
                "code": "1300",
            },
            RateLimited,
        ),
        (
            400,
            {
                "object": "error",
                "message": "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
            ContextTooLong,
        ),
        (
            400,
            {
                "object": "error",
                "message": "Tool call id was call_1 but must be a-z, A-Z, 0-9, with a length of 9.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
            UpstreamBadRequest,
        ),
        (
            422,
            {
                "detail": [
                    {"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": {}}
                ]
            },
            UpstreamBadRequest,
        ),
        (
            500,
            {"object": "error", "message": "Internal", "type": "internal_server_error", "code": "3000"},
            UpstreamUnavailable,
        ),
    ],
)
async def test_error_classification(
    upstream: FakeUpstream,
    client: UpstreamClient,
    status: int,
    body: dict[str, object],
    expected: type[ProviderError],
) -> None:
    upstream.enqueue(json_reply(body, status))
    with pytest.raises(ProviderError) as caught:
        await mistral(upstream, client).complete("m", HELLO, timeout=5)
    assert type(caught.value) is expected


async def test_flat_error_body_with_ok_status(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply({"object": "error", "message": "boom", "type": "internal_server_error", "code": "3000"})
    )
    with pytest.raises(UpstreamUnavailable):
        await mistral(upstream, client).complete("m", HELLO, timeout=5)


async def test_embeddings_use_output_dimension(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(
            {
                "data": [{"index": 0, "embedding": [0.5]}],
                "model": "mistral-embed",
                "usage": {"prompt_tokens": 2},
            }
        )
    )
    result = await mistral(upstream, client).embed(
        "mistral-embed", EmbedRequest(inputs=("a",), dimensions=1), timeout=5
    )
    assert result.vectors == ((0.5,),)
    assert upstream.last.json == {
        "model": "mistral-embed",
        "input": ["a"],
        "encoding_format": "float",
        "output_dimension": 1,
    }
