"""OpenAI adapter against a real local server speaking chat completions."""

from __future__ import annotations

import pytest

from dataplane.chat import (
    ChatRequest,
    EmbedRequest,
    FinishReason,
    GenerationParams,
    ResponseFormat,
    StreamChunk,
    ToolChoice,
    Usage,
)
from dataplane.errors import (
    ContentFiltered,
    ContextTooLong,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamBadRequest,
    UpstreamModelNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from dataplane.upstream import UpstreamClient

from .canned import openai_chunk, openai_completion, openai_text_stream
from .fakes import (
    FakeUpstream,
    json_reply,
    raw_reply,
    sse_event,
    sse_reply,
)
from .samples import ASK_WEATHER, HELLO, PARIS_ARGS, TOOL_ROUND_TRIP, WITH_IMAGES
from .streams import CREDENTIAL, assemble, drain, make_adapter


def openai(upstream: FakeUpstream, client: UpstreamClient):  # type: ignore[no-untyped-def]
    return make_adapter("openai", upstream.base_url + "/v1", client)


async def test_plain_answer_and_request_shape(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(
            openai_completion(
                "Hello!",
                usage={
                    "prompt_tokens": 20,
                    "completion_tokens": 2,
                    "prompt_tokens_details": {"cached_tokens": 8},
                },
            )
        )
    )
    request = ChatRequest(
        messages=HELLO.messages,
        params=GenerationParams(max_output_tokens=50, temperature=0.2, top_p=0.9, stop=("X",), seed=3),
        response_format=ResponseFormat(type="json_object"),
    )
    response = await openai(upstream, client).complete("gpt-4o", request, timeout=5)

    assert response.message.text == "Hello!"
    assert response.finish_reason is FinishReason.STOP
    assert response.usage == Usage(input_tokens=20, output_tokens=2, cached_input_tokens=8)
    assert response.upstream_model == "gpt-test"
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {CREDENTIAL}"
    assert sent.json == {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "max_completion_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["X"],
        "seed": 3,
        "response_format": {"type": "json_object"},
    }


async def test_tool_round_trip_request(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(openai_completion("Done.")))
    await openai(upstream, client).complete("gpt-4o", TOOL_ROUND_TRIP, timeout=5)
    body = upstream.last.json
    assert body["messages"][1] == {"role": "developer", "content": "Answer in English."}
    assert body["messages"][3] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc123",
                "type": "function",
                "function": {"name": "get_weather", "arguments": PARIS_ARGS},
            },
            {
                "id": "toolu_01XYZ",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    }
    assert body["messages"][4] == {"role": "tool", "tool_call_id": "call_abc123", "content": "18C sunny"}
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False
    assert body["max_completion_tokens"] == 100
    assert "max_tokens" not in body


async def test_named_tool_choice_and_json_schema(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(openai_completion("{}")))
    request = ChatRequest(
        messages=HELLO.messages,
        tools=ASK_WEATHER.tools,
        tool_choice=ToolChoice(mode="tool", name="get_weather"),
        response_format=ResponseFormat(
            type="json_schema", name="out", schema={"type": "object"}, strict=True
        ),
    )
    await openai(upstream, client).complete("gpt-4o", request, timeout=5)
    body = upstream.last.json
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }


async def test_images_become_image_url_parts(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(openai_completion("A cat.")))
    await openai(upstream, client).complete("gpt-4o", WITH_IMAGES, timeout=5)
    content = upstream.last.json["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
    ]


async def test_tool_call_answer(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(
            openai_completion(
                None, tool_calls=[("call_1", "get_weather", PARIS_ARGS)], finish_reason="tool_calls"
            )
        )
    )
    response = await openai(upstream, client).complete("gpt-4o", ASK_WEATHER, timeout=5)
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert response.message.content == ()
    [call] = response.message.tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", PARIS_ARGS)


async def test_streamed_answer_with_usage_chunk(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        sse_reply(*openai_text_stream("Hel", "lo!", usage={"prompt_tokens": 9, "completion_tokens": 2}))
    )
    chunks = await drain(openai(upstream, client).stream("gpt-4o", HELLO, timeout=5))
    folded = assemble(chunks)
    assert folded.text == "Hello!"
    assert folded.finish_reason is FinishReason.STOP
    assert folded.finish_count == 1
    assert folded.usage == Usage(input_tokens=9, output_tokens=2)
    body = upstream.last.json
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_streamed_parallel_tool_calls(upstream: FakeUpstream, client: UpstreamClient) -> None:
    def call_start(index: int, call_id: str) -> dict[str, object]:
        return {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }

    def call_args(index: int, fragment: str) -> dict[str, object]:
        return {"index": index, "function": {"arguments": fragment}}

    upstream.enqueue(
        sse_reply(
            sse_event(
                openai_chunk({"role": "assistant", "content": None, "tool_calls": [call_start(0, "call_a")]})
            ),
            sse_event(openai_chunk({"tool_calls": [call_args(0, '{"city": ')]})),
            sse_event(openai_chunk({"tool_calls": [call_args(0, '"Paris"}')]})),
            sse_event(openai_chunk({"tool_calls": [call_start(1, "call_b")]})),
            sse_event(openai_chunk({"tool_calls": [call_args(1, '{"city": "Rome"}')]})),
            sse_event(openai_chunk({}, "tool_calls")),
            sse_event(openai_chunk(usage={"prompt_tokens": 30, "completion_tokens": 20})),
            sse_event("[DONE]"),
        )
    )
    folded = assemble(await drain(openai(upstream, client).stream("gpt-4o", ASK_WEATHER, timeout=5)))
    assert folded.tool_calls == {
        0: {"id": "call_a", "name": "get_weather", "arguments": PARIS_ARGS},
        1: {"id": "call_b", "name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    assert folded.finish_reason is FinishReason.TOOL_CALLS
    assert folded.usage == Usage(input_tokens=30, output_tokens=20)


async def test_unknown_chunk_fields_are_tolerated(upstream: FakeUpstream, client: UpstreamClient) -> None:
    chunk = openai_chunk({"content": "ok", "obfuscation": "xyz"})
    chunk["system_fingerprint"] = "fp"
    upstream.enqueue(
        sse_reply(
            b": keep-alive\n\n", sse_event(chunk), sse_event(openai_chunk({}, "stop")), sse_event("[DONE]")
        )
    )
    folded = assemble(await drain(openai(upstream, client).stream("gpt-4o", HELLO, timeout=5)))
    assert folded.text == "ok"


async def test_embeddings(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
                    {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
                ],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        )
    )
    result = await openai(upstream, client).embed(
        "text-embedding-3-small", EmbedRequest(inputs=("a", "b"), dimensions=2), timeout=5
    )
    assert result.vectors == ((0.1, 0.2), (0.3, 0.4))
    assert result.usage == Usage(input_tokens=4)
    assert upstream.last.path == "/v1/embeddings"
    assert upstream.last.json == {
        "model": "text-embedding-3-small",
        "input": ["a", "b"],
        "encoding_format": "float",
        "dimensions": 2,
    }


def openai_error(message: str, type_: str, code: str | None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "retry_after"),
    [
        (
            429,
            openai_error("Rate limit reached", "requests", "rate_limit_exceeded"),
            {"retry-after-ms": "1500"},
            RateLimited,
            1.5,
        ),
        (
            429,
            openai_error("You exceeded your quota", "insufficient_quota", "insufficient_quota"),
            {},
            QuotaExhausted,
            None,
        ),
        (
            401,
            openai_error(
                f"Incorrect API key provided: {CREDENTIAL}", "invalid_request_error", "invalid_api_key"
            ),
            {},
            UpstreamAuthFailed,
            None,
        ),
        (403, openai_error("Forbidden", "invalid_request_error", None), {}, UpstreamAuthFailed, None),
        (
            400,
            openai_error(
                "This model's maximum context length is 8192 tokens",
                "invalid_request_error",
                "context_length_exceeded",
            ),
            {},
            ContextTooLong,
            None,
        ),
        (
            400,
            openai_error("flagged", "invalid_request_error", "content_policy_violation"),
            {},
            ContentFiltered,
            None,
        ),
        (400, openai_error("bad param", "invalid_request_error", None), {}, UpstreamBadRequest, None),
        (
            404,
            openai_error("The model does not exist", "invalid_request_error", "model_not_found"),
            {},
            UpstreamModelNotFound,
            None,
        ),
        (500, openai_error("oops", "server_error", None), {"retry-after": "2"}, UpstreamUnavailable, 2.0),
        (
            503,
            openai_error("The engine is currently overloaded", "server_error", None),
            {},
            UpstreamUnavailable,
            None,
        ),
        (502, None, {}, UpstreamUnavailable, None),
        (503, None, {}, Overloaded, None),
    ],
)
async def test_error_classification(
    upstream: FakeUpstream,
    client: UpstreamClient,
    status: int,
    body: dict[str, object] | None,
    headers: dict[str, str],
    expected: type[ProviderError],
    retry_after: float | None,
) -> None:
    reply = (
        json_reply(body, status, headers)
        if body is not None
        else raw_reply("<html>Bad gateway</html>", status, "text/html")
    )
    upstream.enqueue(reply)
    with pytest.raises(ProviderError) as caught:
        await openai(upstream, client).complete("gpt-4o", HELLO, timeout=5)
    error = caught.value
    assert type(error) is expected
    assert error.http_status == status
    assert error.retry_after == retry_after
    assert error.provider == "openai"
    assert CREDENTIAL not in str(error)
    assert CREDENTIAL not in (error.body or "")
    if body is not None:
        # The provider's prose stays in .body; the caller's message has only status and code.
        assert str(body["error"]["message"]) not in str(error)  # type: ignore[index]


async def test_retry_after_http_date(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(
            openai_error("slow down", "requests", "rate_limit_exceeded"),
            429,
            {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
        )
    )
    with pytest.raises(RateLimited) as caught:
        await openai(upstream, client).complete("gpt-4o", HELLO, timeout=5)
    assert caught.value.retry_after == 0.0  # a date in the past means "now"
    assert caught.value.retryable


async def test_quota_is_not_retryable_but_rate_limit_is() -> None:
    assert not QuotaExhausted.retryable
    assert RateLimited.retryable


async def test_ok_status_with_error_body(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(openai_error("upstream worker died", "server_error", None)))
    with pytest.raises(UpstreamUnavailable):
        await openai(upstream, client).complete("gpt-4o", HELLO, timeout=5)


async def test_body_without_choices(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply({"id": "x", "object": "chat.completion"}))
    with pytest.raises(UpstreamProtocolError):
        await openai(upstream, client).complete("gpt-4o", HELLO, timeout=5)


async def test_stream_error_event_mid_stream(upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = openai_text_stream("partial")
    upstream.enqueue(
        sse_reply(
            frames[0], frames[1], sse_event(openai_error("The server had an error", "server_error", None))
        )
    )
    received: list[StreamChunk] = []
    with pytest.raises(UpstreamUnavailable):
        await drain(openai(upstream, client).stream("gpt-4o", HELLO, timeout=5), into=received)
    assert assemble(received).text == "partial"


async def test_stream_ending_without_done(upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = openai_text_stream("partial")
    upstream.enqueue(sse_reply(frames[0], frames[1]))
    with pytest.raises(UpstreamProtocolError, match=r"\[DONE\]"):
        await drain(openai(upstream, client).stream("gpt-4o", HELLO, timeout=5))


async def test_stream_http_error_status(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply(openai_error("Rate limit", "requests", "rate_limit_exceeded"), 429, {"retry-after": "3"})
    )
    with pytest.raises(RateLimited) as caught:
        await drain(openai(upstream, client).stream("gpt-4o", HELLO, timeout=5))
    assert caught.value.retry_after == 3.0
