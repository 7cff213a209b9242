"""Gemini adapter against a real local server speaking generateContent / streamGenerateContent."""

from __future__ import annotations

import pytest

from dataplane.chat import (
    ChatRequest,
    EmbedRequest,
    FinishReason,
    GenerationParams,
    Message,
    ResponseFormat,
    Role,
    TextPart,
    ToolChoice,
    Usage,
)
from dataplane.errors import (
    ContentFiltered,
    ContextTooLong,
    Overloaded,
    ProviderError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamBadRequest,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from dataplane.providers.base import ProviderAdapter
from dataplane.upstream import UpstreamClient

from .canned import gemini_error, gemini_response, gemini_stream
from .fakes import FakeUpstream, json_reply, sse_event, sse_reply
from .samples import ASK_WEATHER, HELLO, PARIS_ARGS, TOOL_ROUND_TRIP, WITH_IMAGES, user
from .streams import CREDENTIAL, assemble, drain, make_adapter

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def gemini(upstream: FakeUpstream, client: UpstreamClient) -> ProviderAdapter:
    return make_adapter("gemini", upstream.base_url + "/v1beta", client)


async def test_plain_answer_and_request_shape(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(
            gemini_response(
                "Hello!",
                usage={
                    "promptTokenCount": 40,
                    "cachedContentTokenCount": 30,
                    "candidatesTokenCount": 5,
                    "thoughtsTokenCount": 2,
                    "totalTokenCount": 47,
                },
            )
        )
    )
    request = ChatRequest(
        messages=HELLO.messages,
        params=GenerationParams(max_output_tokens=64, temperature=0.3, top_p=0.8, stop=("X",), seed=5),
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
    )
    response = await gemini(upstream, client).complete("models/gemini-2.5-flash", request, timeout=5)
    assert response.message.text == "Hello!"
    assert response.finish_reason is FinishReason.STOP
    # promptTokenCount already includes cached content; thoughts count as output, and are
    # the reasoning part of it.
    assert response.usage == Usage(
        input_tokens=40, output_tokens=7, cached_input_tokens=30, reasoning_output_tokens=2
    )
    sent = upstream.last
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == CREDENTIAL
    assert sent.json == {
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 64,
            "temperature": 0.3,
            "topP": 0.8,
            "stopSequences": ["X"],
            "seed": 5,
            "responseMimeType": "application/json",
            "responseSchema": {"type": "object"},
        },
    }


async def test_tool_round_trip_translation(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(gemini_response("Both sunny.")))
    await gemini(upstream, client).complete("gemini-x", TOOL_ROUND_TRIP, timeout=5)
    body = upstream.last.json
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\nAnswer in English."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
            ],
        },
        # Results are mapped back to their call's name, all in one user turn.
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"result": "18C sunny"}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "22C clear"}}},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                }
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert body["generationConfig"]["maxOutputTokens"] == 100


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice(mode="auto"), {"mode": "AUTO"}),
        (ToolChoice(mode="none"), {"mode": "NONE"}),
        (
            ToolChoice(mode="tool", name="get_weather"),
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
async def test_tool_config_modes(
    upstream: FakeUpstream, client: UpstreamClient, choice: ToolChoice, expected: dict[str, object]
) -> None:
    upstream.enqueue(json_reply(gemini_response()))
    request = ChatRequest(messages=ASK_WEATHER.messages, tools=ASK_WEATHER.tools, tool_choice=choice)
    await gemini(upstream, client).complete("gemini-x", request, timeout=5)
    assert upstream.last.json["toolConfig"] == {"functionCallingConfig": expected}


async def test_json_tool_result_is_sent_as_an_object(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(gemini_response()))
    messages = (
        *TOOL_ROUND_TRIP.messages[:4],
        Message(role=Role.TOOL, tool_call_id="call_abc123", content=(TextPart('{"temp": 18}'),)),
    )
    await gemini(upstream, client).complete("gemini-x", ChatRequest(messages=messages), timeout=5)
    part = upstream.last.json["contents"][-1]["parts"][0]
    assert part == {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}}


async def test_a_tool_result_nested_past_the_recursion_limit_is_sent_as_text(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """The caller's text, not JSON this node can parse: sent as text (it was an INTERNAL error)."""
    upstream.enqueue(json_reply(gemini_response()))
    deep = "[" * 20_000 + "]" * 20_000
    messages = (
        *TOOL_ROUND_TRIP.messages[:4],
        Message(role=Role.TOOL, tool_call_id="call_abc123", content=(TextPart(deep),)),
    )
    await gemini(upstream, client).complete("gemini-x", ChatRequest(messages=messages), timeout=5)
    part = upstream.last.json["contents"][-1]["parts"][0]
    assert part == {"functionResponse": {"name": "get_weather", "response": {"result": deep}}}


async def test_tool_result_for_an_unknown_call_is_a_bad_request(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    request = ChatRequest(
        messages=(user("hi"), Message(role=Role.TOOL, tool_call_id="nope", content=(TextPart("x"),)))
    )
    with pytest.raises(UpstreamBadRequest, match="nope"):
        await gemini(upstream, client).complete("gemini-x", request, timeout=5)


async def test_images(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(gemini_response("A cat.")))
    await gemini(upstream, client).complete("gemini-x", WITH_IMAGES, timeout=5)
    assert upstream.last.json["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"fileData": {"mimeType": "image/*", "fileUri": "https://example.com/cat.png"}},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}},
    ]


async def test_function_call_with_stop_is_tool_calls(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(gemini_response(None, calls=[("get_weather", {"city": "Paris"})], finish_reason="STOP"))
    )
    response = await gemini(upstream, client).complete("gemini-x", ASK_WEATHER, timeout=5)
    assert response.finish_reason is FinishReason.TOOL_CALLS
    [call] = response.message.tool_calls
    assert call.id.startswith("call_")
    assert (call.name, call.arguments) == ("get_weather", PARIS_ARGS)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("OTHER", FinishReason.STOP),
    ],
)
async def test_finish_reasons(
    upstream: FakeUpstream, client: UpstreamClient, reason: str, expected: FinishReason
) -> None:
    upstream.enqueue(json_reply(gemini_response("x", finish_reason=reason)))
    response = await gemini(upstream, client).complete("gemini-x", HELLO, timeout=5)
    assert response.finish_reason is expected


async def test_malformed_function_call_is_a_protocol_error(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(json_reply(gemini_response(None, finish_reason="MALFORMED_FUNCTION_CALL")))
    with pytest.raises(UpstreamProtocolError, match="MALFORMED_FUNCTION_CALL"):
        await gemini(upstream, client).complete("gemini-x", ASK_WEATHER, timeout=5)


async def test_blocked_prompt_is_content_filtered(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}})
    )
    with pytest.raises(ContentFiltered):
        await gemini(upstream, client).complete("gemini-x", HELLO, timeout=5)


async def test_streamed_text_uses_last_usage_snapshot(upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = gemini_stream("Hel", "lo!", final_usage={"promptTokenCount": 12, "candidatesTokenCount": 4})
    upstream.enqueue(sse_reply(*frames))
    folded = assemble(await drain(gemini(upstream, client).stream("gemini-x", HELLO, timeout=5)))
    assert folded.text == "Hello!"
    assert folded.finish_reason is FinishReason.STOP
    assert folded.usage == Usage(input_tokens=12, output_tokens=4)
    assert upstream.last.path == "/v1beta/models/gemini-x:streamGenerateContent"
    assert upstream.last.query == {"alt": "sse"}


async def test_streamed_function_calls_arrive_whole(upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = gemini_stream(calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})])
    upstream.enqueue(sse_reply(*frames))
    folded = assemble(await drain(gemini(upstream, client).stream("gemini-x", ASK_WEATHER, timeout=5)))
    assert [(c["name"], c["arguments"]) for c in folded.tool_calls.values()] == [
        ("get_weather", PARIS_ARGS),
        ("get_weather", '{"city": "Rome"}'),
    ]
    assert folded.finish_reason is FinishReason.TOOL_CALLS


async def test_stream_ending_before_finish_reason(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(sse_reply(*gemini_stream("cut", "off")[:-1]))
    with pytest.raises(UpstreamProtocolError, match="finishReason"):
        await drain(gemini(upstream, client).stream("gemini-x", HELLO, timeout=5))


async def test_error_event_in_stream(upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = gemini_stream("partial")
    upstream.enqueue(
        sse_reply(frames[0], sse_event(gemini_error(503, "UNAVAILABLE", "The model is overloaded.")))
    )
    with pytest.raises(Overloaded):
        await drain(gemini(upstream, client).stream("gemini-x", HELLO, timeout=5))


@pytest.mark.parametrize(
    ("status", "body", "expected", "retry_after"),
    [
        (
            400,
            gemini_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid.",
                {"@type": ERROR_INFO, "reason": "API_KEY_INVALID"},
            ),
            UpstreamAuthFailed,
            None,
        ),
        (
            429,
            gemini_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded",
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"},
            ),
            RateLimited,
            30.0,
        ),
        (403, gemini_error(403, "PERMISSION_DENIED", "denied"), UpstreamAuthFailed, None),
        (
            400,
            gemini_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (2000000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            ContextTooLong,
            None,
        ),
        (400, gemini_error(400, "INVALID_ARGUMENT", "Invalid value at 'contents'"), UpstreamBadRequest, None),
        (503, gemini_error(503, "UNAVAILABLE", "The model is overloaded."), Overloaded, None),
        (500, gemini_error(500, "INTERNAL", "An internal error has occurred."), UpstreamUnavailable, None),
    ],
)
async def test_error_classification(
    upstream: FakeUpstream,
    client: UpstreamClient,
    status: int,
    body: dict[str, object],
    expected: type[ProviderError],
    retry_after: float | None,
) -> None:
    upstream.enqueue(json_reply(body, status))
    with pytest.raises(ProviderError) as caught:
        await gemini(upstream, client).complete("gemini-x", HELLO, timeout=5)
    assert type(caught.value) is expected
    assert caught.value.retry_after == retry_after


async def test_embed_one_and_batch(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply({"embedding": {"values": [0.1, 0.2]}}),
        json_reply({"embeddings": [{"values": [1.0]}, {"values": [2.0]}]}),
    )
    adapter = gemini(upstream, client)
    one = await adapter.embed("text-embedding-004", EmbedRequest(inputs=("a",), dimensions=2), timeout=5)
    assert one.vectors == ((0.1, 0.2),)
    assert upstream.last.path == "/v1beta/models/text-embedding-004:embedContent"
    assert upstream.last.json == {"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 2}
    many = await adapter.embed("text-embedding-004", EmbedRequest(inputs=("a", "b")), timeout=5)
    assert many.vectors == ((1.0,), (2.0,))
    assert upstream.last.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert upstream.last.json == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}},
        ]
    }
