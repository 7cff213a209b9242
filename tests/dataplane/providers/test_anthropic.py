"""Anthropic adapter against a real local server speaking the Messages API."""

from __future__ import annotations

import pytest

from dataplane.chat import (
    ChatRequest,
    EmbedRequest,
    FinishReason,
    GenerationParams,
    Message,
    Role,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolChoice,
    Usage,
)
from dataplane.errors import (
    ContextTooLong,
    Overloaded,
    ProviderError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamBadRequest,
    UpstreamModelNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from dataplane.providers.base import ProviderAdapter
from dataplane.upstream import UpstreamClient

from .canned import anthropic_error, anthropic_event, anthropic_message, anthropic_stream
from .fakes import FakeUpstream, json_reply, sse_event, sse_reply
from .samples import ASK_WEATHER, HELLO, PARIS_ARGS, TOOL_ROUND_TRIP, WITH_IMAGES, user
from .streams import CREDENTIAL, assemble, drain, make_adapter


def anthropic(upstream: FakeUpstream, client: UpstreamClient, **settings: str) -> ProviderAdapter:
    return make_adapter("anthropic", upstream.base_url, client, settings=settings)


async def test_plain_answer_headers_and_default_max_tokens(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(json_reply(anthropic_message("Hello!")))
    response = await anthropic(upstream, client).complete("claude-x", HELLO, timeout=5)
    assert response.message.text == "Hello!"
    assert response.finish_reason is FinishReason.STOP
    assert response.usage == Usage(input_tokens=12, output_tokens=3)
    sent = upstream.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == CREDENTIAL
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-x",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
    }


async def test_settings_override_version_and_default_max_tokens(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(json_reply(anthropic_message()))
    adapter = anthropic(upstream, client, anthropic_version="2025-01-01", default_max_tokens="1000")
    await adapter.complete("claude-x", HELLO, timeout=5)
    assert upstream.last.headers["anthropic-version"] == "2025-01-01"
    assert upstream.last.json["max_tokens"] == 1000


@pytest.mark.parametrize("value", ["0", "lots", "-5"])
def test_bad_default_max_tokens_fails_when_the_adapter_is_built(client: UpstreamClient, value: str) -> None:
    with pytest.raises(ValueError, match="default_max_tokens"):
        make_adapter("anthropic", "http://127.0.0.1:1", client, settings={"default_max_tokens": value})


async def test_tool_round_trip_translation(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(anthropic_message("Both sunny.")))
    await anthropic(upstream, client).complete("claude-x", TOOL_ROUND_TRIP, timeout=5)
    body = upstream.last.json
    # System and developer messages are hoisted and joined with a newline.
    assert body["system"] == "Be brief.\nAnswer in English."
    assert body["max_tokens"] == 100
    assert body["temperature"] == 0.5
    assert body["stop_sequences"] == ["END"]
    assert "seed" not in body
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    # "required" is "any", and the one-call switch lives inside tool_choice.
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_abc123", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_01XYZ", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        # Both results in ONE user turn.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_abc123", "content": "18C sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_01XYZ", "content": "22C clear"},
            ],
        },
    ]


async def test_user_text_after_tool_results_joins_the_turn_after_them(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(json_reply(anthropic_message()))
    request = ChatRequest(
        messages=(*TOOL_ROUND_TRIP.messages, user("Thanks, and tomorrow?")), tools=TOOL_ROUND_TRIP.tools
    )
    await anthropic(upstream, client).complete("claude-x", request, timeout=5)
    last = upstream.last.json["messages"][-1]
    assert last["role"] == "user"
    assert [b["type"] for b in last["content"]] == ["tool_result", "tool_result", "text"]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        (ToolChoice(mode="auto"), None, {"type": "auto"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice(mode="none"), None, {"type": "none"}),
        (ToolChoice(mode="tool", name="get_weather"), None, {"type": "tool", "name": "get_weather"}),
        (
            ToolChoice(mode="tool", name="get_weather"),
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
    ],
)
async def test_tool_choice_mapping(
    upstream: FakeUpstream,
    client: UpstreamClient,
    choice: ToolChoice | None,
    parallel: bool | None,
    expected: dict[str, object] | None,
) -> None:
    upstream.enqueue(json_reply(anthropic_message()))
    request = ChatRequest(
        messages=ASK_WEATHER.messages,
        tools=ASK_WEATHER.tools,
        tool_choice=choice,
        params=GenerationParams(parallel_tool_calls=parallel, temperature=1.7),
    )
    await anthropic(upstream, client).complete("claude-x", request, timeout=5)
    assert upstream.last.json.get("tool_choice") == expected
    assert upstream.last.json["temperature"] == 1.0  # Anthropic's range is 0-1


async def test_images_url_and_base64(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(anthropic_message("A cat.")))
    await anthropic(upstream, client).complete("claude-x", WITH_IMAGES, timeout=5)
    assert upstream.last.json["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="}},
    ]


async def test_invalid_tool_arguments_are_a_bad_request(
    client: UpstreamClient, upstream: FakeUpstream
) -> None:
    request = ChatRequest(
        messages=(
            user("hi"),
            Message(
                role=Role.ASSISTANT,
                tool_calls=(ToolCall(id="t1", name="get_weather", arguments="{not json"),),
            ),
            Message(role=Role.TOOL, tool_call_id="t1", content=(TextPart("x"),)),
        )
    )
    with pytest.raises(UpstreamBadRequest, match="t1"):
        await anthropic(upstream, client).complete("claude-x", request, timeout=5)
    assert upstream.requests == []


async def test_tool_use_answer_and_cache_usage(upstream: FakeUpstream, client: UpstreamClient) -> None:
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 50,
        "output_tokens": 7,
    }
    upstream.enqueue(
        json_reply(
            anthropic_message(
                "Let me check.",
                tool_uses=[("toolu_1", "get_weather", {"city": "Paris"})],
                stop_reason="tool_use",
                usage=usage,
            )
        )
    )
    response = await anthropic(upstream, client).complete("claude-x", ASK_WEATHER, timeout=5)
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert response.message.text == "Let me check."
    [call] = response.message.tool_calls
    assert (call.id, call.name, call.arguments) == ("toolu_1", "get_weather", PARIS_ARGS)
    # Anthropic counts cache reads and writes apart from input_tokens; ours includes them.
    assert response.usage == Usage(
        input_tokens=160, output_tokens=7, cached_input_tokens=100, cache_write_input_tokens=50
    )


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("model_context_window_exceeded", FinishReason.LENGTH),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("pause_turn", FinishReason.LENGTH),  # incomplete: the caller continues it
    ],
)
async def test_stop_reasons(
    upstream: FakeUpstream, client: UpstreamClient, stop_reason: str, expected: FinishReason
) -> None:
    upstream.enqueue(json_reply(anthropic_message("x", stop_reason=stop_reason)))
    response = await anthropic(upstream, client).complete("claude-x", HELLO, timeout=5)
    assert response.finish_reason is expected


async def test_streamed_text_with_ping_and_cumulative_usage(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    frames = anthropic_stream(
        "Hel",
        "lo!",
        start_usage={"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1},
        final_usage={"output_tokens": 9},
    )
    upstream.enqueue(sse_reply(*frames))
    chunks = await drain(anthropic(upstream, client).stream("claude-x", HELLO, timeout=5))
    folded = assemble(chunks)
    assert folded.text == "Hello!"
    assert folded.finish_reason is FinishReason.STOP
    assert folded.usage == Usage(input_tokens=25, output_tokens=9, cached_input_tokens=5)
    assert upstream.last.json["stream"] is True


async def test_streamed_tool_calls_after_text_use_tool_indexes(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    # The text block is Anthropic index 0, so the tool blocks are 1 and 2; ours must be 0 and 1.
    frames = anthropic_stream(
        "Checking.",
        tool_uses=[
            ("toolu_a", "get_weather", ['{"city": ', '"Paris"}']),
            ("toolu_b", "get_weather", ['{"city": "Rome"}']),
        ],
        stop_reason="tool_use",
    )
    upstream.enqueue(sse_reply(*frames))
    folded = assemble(await drain(anthropic(upstream, client).stream("claude-x", ASK_WEATHER, timeout=5)))
    assert folded.text == "Checking."
    assert folded.tool_calls == {
        0: {"id": "toolu_a", "name": "get_weather", "arguments": PARIS_ARGS},
        1: {"id": "toolu_b", "name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    assert folded.finish_reason is FinishReason.TOOL_CALLS


async def test_streamed_tool_without_arguments_assembles_to_empty_object(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(sse_reply(*anthropic_stream(tool_uses=[("toolu_a", "now", [])], stop_reason="tool_use")))
    folded = assemble(await drain(anthropic(upstream, client).stream("claude-x", ASK_WEATHER, timeout=5)))
    assert folded.tool_calls == {0: {"id": "toolu_a", "name": "now", "arguments": "{}"}}


async def test_unknown_events_and_thinking_blocks_are_ignored(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    frames = anthropic_stream("ok")
    extra = [
        anthropic_event({"type": "brand_new_event", "payload": 1}),
        anthropic_event(
            {"type": "content_block_start", "index": 5, "content_block": {"type": "thinking", "thinking": ""}}
        ),
        anthropic_event(
            {"type": "content_block_delta", "index": 5, "delta": {"type": "thinking_delta", "thinking": "hm"}}
        ),
        anthropic_event({"type": "content_block_stop", "index": 5}),
    ]
    upstream.enqueue(sse_reply(*frames[:2], *extra, *frames[2:]))
    folded = assemble(await drain(anthropic(upstream, client).stream("claude-x", HELLO, timeout=5)))
    assert folded.text == "ok"


async def test_message_delta_without_usage_keeps_start_usage(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    frames = anthropic_stream("ok")
    delta = anthropic_event(
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
    )
    upstream.enqueue(sse_reply(*frames[:-2], delta, frames[-1]))
    folded = assemble(await drain(anthropic(upstream, client).stream("claude-x", HELLO, timeout=5)))
    assert folded.usage == Usage(input_tokens=12, output_tokens=1)


async def test_overloaded_error_event_mid_stream(upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = anthropic_stream("partial answer")
    upstream.enqueue(
        sse_reply(*frames[:4], sse_event(anthropic_error("overloaded_error", "Overloaded"), event="error"))
    )
    received: list[StreamChunk] = []
    with pytest.raises(Overloaded) as caught:
        await drain(anthropic(upstream, client).stream("claude-x", HELLO, timeout=5), into=received)
    assert caught.value.retryable
    assert caught.value.http_status is None
    assert assemble(received).text == "partial answer"


async def test_stream_without_message_stop(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(sse_reply(*anthropic_stream("cut")[:-1]))
    with pytest.raises(UpstreamProtocolError, match="message_stop"):
        await drain(anthropic(upstream, client).stream("claude-x", HELLO, timeout=5))


async def test_streamed_tool_input_that_is_not_json(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        sse_reply(*anthropic_stream(tool_uses=[("toolu_a", "f", ['{"a": '])], stop_reason="tool_use"))
    )
    with pytest.raises(UpstreamProtocolError):
        await drain(anthropic(upstream, client).stream("claude-x", HELLO, timeout=5))


@pytest.mark.parametrize(
    ("status", "type_", "message", "expected"),
    [
        (529, "overloaded_error", "Overloaded", Overloaded),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            RateLimited,
        ),
        (401, "authentication_error", "invalid x-api-key", UpstreamAuthFailed),
        (403, "permission_error", "no access", UpstreamAuthFailed),
        (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", ContextTooLong),
        (400, "invalid_request_error", "messages.1: tool_result blocks must come first", UpstreamBadRequest),
        (404, "not_found_error", "model: claude-nope", UpstreamModelNotFound),
        (500, "api_error", "Internal server error", UpstreamUnavailable),
    ],
)
async def test_error_classification(
    upstream: FakeUpstream,
    client: UpstreamClient,
    status: int,
    type_: str,
    message: str,
    expected: type[ProviderError],
) -> None:
    upstream.enqueue(json_reply(anthropic_error(type_, message), status, {"retry-after": "7"}))
    with pytest.raises(ProviderError) as caught:
        await anthropic(upstream, client).complete("claude-x", HELLO, timeout=5)
    assert type(caught.value) is expected
    assert caught.value.retry_after == 7.0
    assert message not in str(caught.value)
    assert message in (caught.value.body or "")


async def test_no_embeddings(upstream: FakeUpstream, client: UpstreamClient) -> None:
    with pytest.raises(UpstreamBadRequest, match="embeddings"):
        await anthropic(upstream, client).embed("claude-x", EmbedRequest(inputs=("x",)), timeout=5)


async def test_a_tool_use_block_without_an_id_gets_one(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """The other adapters, and Anthropic's own streams, make up an id a call lacks; a plain answer
    served the call with id "", which no tool result can answer (Anthropic itself refuses a
    ``tool_result`` whose ``tool_use_id`` matches no ``tool_use``)."""
    body = anthropic_message(None, tool_uses=[("", "get_weather", {"city": "Paris"})], stop_reason="tool_use")
    upstream.enqueue(json_reply(body))
    response = await make_adapter("anthropic", upstream.base_url, client).complete(
        "c", ASK_WEATHER, timeout=5
    )
    assert response.message.tool_calls[0].id.startswith("call_")
