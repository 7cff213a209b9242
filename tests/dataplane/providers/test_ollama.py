"""Ollama native adapter against a real local server speaking /api/chat (NDJSON streaming)."""

from __future__ import annotations

import pytest

from dataplane.chat import (
    ChatRequest,
    EmbedRequest,
    FinishReason,
    GenerationParams,
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    StreamChunk,
    Usage,
)
from dataplane.errors import (
    UpstreamBadRequest,
    UpstreamModelNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from dataplane.providers.base import ProviderAdapter
from dataplane.upstream import UpstreamClient

from .canned import ollama_response, ollama_stream
from .fakes import FakeUpstream, json_reply, ndjson_line, ndjson_reply
from .samples import ASK_WEATHER, HELLO, PARIS_ARGS, TOOL_ROUND_TRIP, WITH_IMAGES
from .streams import assemble, drain, make_adapter


def ollama(upstream: FakeUpstream, client: UpstreamClient) -> ProviderAdapter:
    return make_adapter("ollama", upstream.base_url, client, credential=None)


async def test_plain_answer_sends_stream_false_and_options(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(json_reply(ollama_response("Hello!", prompt_eval_count=20, eval_count=4)))
    request = ChatRequest(
        messages=HELLO.messages,
        params=GenerationParams(max_output_tokens=32, temperature=0.1, stop=("X",), seed=9),
        response_format=ResponseFormat(type="json_object"),
    )
    response = await ollama(upstream, client).complete("llama3.2", request, timeout=5)
    assert response.message.text == "Hello!"
    assert response.finish_reason is FinishReason.STOP
    assert response.usage == Usage(input_tokens=20, output_tokens=4)
    sent = upstream.last
    assert sent.path == "/api/chat"
    assert sent.json == {
        "model": "llama3.2",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "stream": False,
        "options": {"num_predict": 32, "temperature": 0.1, "stop": ["X"], "seed": 9},
        "format": "json",
    }


async def test_tool_round_trip_translation(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(ollama_response("Both sunny.")))
    await ollama(upstream, client).complete("llama3.2", TOOL_ROUND_TRIP, timeout=5)
    messages = upstream.last.json["messages"]
    assert messages[1] == {"role": "system", "content": "Answer in English."}
    assert messages[3]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
    ]
    assert messages[4] == {"role": "tool", "content": "18C sunny", "tool_name": "get_weather"}
    assert "tool_choice" not in upstream.last.json
    assert upstream.last.json["tools"][0]["function"]["name"] == "get_weather"


async def test_images_must_be_inline(upstream: FakeUpstream, client: UpstreamClient) -> None:
    with pytest.raises(UpstreamBadRequest, match="inline"):
        await ollama(upstream, client).complete("llava", WITH_IMAGES, timeout=5)
    upstream.enqueue(json_reply(ollama_response("A cat.")))
    inline = ChatRequest(
        messages=(Message(role=Role.USER, content=(ImagePart(data=b"\x89PNG", media_type="image/png"),)),)
    )
    await ollama(upstream, client).complete("llava", inline, timeout=5)
    assert upstream.last.json["messages"][0] == {"role": "user", "content": "", "images": ["iVBORw=="]}


async def test_stream_reports_untranslatable_requests_when_iterated(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    stream = ollama(upstream, client).stream("llava", WITH_IMAGES, timeout=5)  # building it never raises
    with pytest.raises(UpstreamBadRequest):
        await drain(stream)
    assert upstream.requests == []


async def test_tool_calls_with_stop_and_no_ids(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(ollama_response("", calls=[("get_weather", {"city": "Paris"})])))
    response = await ollama(upstream, client).complete("llama3.2", ASK_WEATHER, timeout=5)
    assert response.finish_reason is FinishReason.TOOL_CALLS
    [call] = response.message.tool_calls
    assert call.id.startswith("call_")
    assert (call.name, call.arguments) == ("get_weather", PARIS_ARGS)


async def test_length_done_reason(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(ollama_response("cut", done_reason="length")))
    assert (
        await ollama(upstream, client).complete("m", HELLO, timeout=5)
    ).finish_reason is FinishReason.LENGTH


async def test_streamed_answer(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(ndjson_reply(*ollama_stream("Hel", "lo!", eval_count=2)))
    folded = assemble(await drain(ollama(upstream, client).stream("llama3.2", HELLO, timeout=5)))
    assert folded.text == "Hello!"
    assert folded.finish_reason is FinishReason.STOP
    assert folded.usage == Usage(input_tokens=12, output_tokens=2)
    assert upstream.last.json["stream"] is True


async def test_streamed_tool_calls(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        ndjson_reply(
            *ollama_stream(calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})])
        )
    )
    folded = assemble(await drain(ollama(upstream, client).stream("llama3.2", ASK_WEATHER, timeout=5)))
    assert [(c["name"], c["arguments"]) for c in folded.tool_calls.values()] == [
        ("get_weather", PARIS_ARGS),
        ("get_weather", '{"city": "Rome"}'),
    ]
    assert folded.finish_reason is FinishReason.TOOL_CALLS


async def test_error_line_mid_stream(upstream: FakeUpstream, client: UpstreamClient) -> None:
    lines = ollama_stream("partial")
    upstream.enqueue(ndjson_reply(lines[0], ndjson_line({"error": "an unexpected error occurred"})))
    received: list[StreamChunk] = []
    with pytest.raises(UpstreamUnavailable):
        await drain(ollama(upstream, client).stream("llama3.2", HELLO, timeout=5), into=received)
    assert assemble(received).text == "partial"


async def test_stream_without_done_line(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(ndjson_reply(*ollama_stream("cut")[:-1]))
    with pytest.raises(UpstreamProtocolError, match="done"):
        await drain(ollama(upstream, client).stream("llama3.2", HELLO, timeout=5))


async def test_model_not_found(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply({"error": "model 'nope' not found"}, 404))
    # The deployment's model is missing upstream: its failure (another deployment may serve), not the caller's.
    with pytest.raises(UpstreamModelNotFound) as caught:
        await ollama(upstream, client).complete("nope", HELLO, timeout=5)
    assert caught.value.http_status == 404
    assert "nope" not in str(caught.value)


async def test_embeddings(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(
        json_reply({"model": "all-minilm", "embeddings": [[0.1, 0.2], [0.3, 0.4]], "prompt_eval_count": 6})
    )
    result = await ollama(upstream, client).embed("all-minilm", EmbedRequest(inputs=("a", "b")), timeout=5)
    assert result.vectors == ((0.1, 0.2), (0.3, 0.4))
    assert result.usage == Usage(input_tokens=6)
    assert upstream.last.path == "/api/embed"
    assert upstream.last.json == {"model": "all-minilm", "input": ["a", "b"]}
