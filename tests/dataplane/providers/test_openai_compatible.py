"""OpenAI-compatible servers (vLLM, TGI, LM Studio, Ollama /v1) and the simulator type."""

from __future__ import annotations

import pytest

from dataplane.chat import ChatRequest, EmbedRequest, FinishReason, ToolChoice, Usage
from dataplane.errors import UpstreamBadRequest, UpstreamProtocolError, UpstreamUnavailable
from dataplane.providers.registry import adapter_types
from dataplane.upstream import UpstreamClient

from .canned import openai_chunk, openai_completion, openai_text_stream
from .fakes import (
    FakeUpstream,
    json_reply,
    sse_event,
    sse_reply,
)
from .samples import ASK_WEATHER, HELLO, PARIS_ARGS, TOOL_ROUND_TRIP
from .streams import assemble, drain, make_adapter


@pytest.mark.parametrize("type_name", ["openai_compatible", "simulated"])
async def test_plain_answer_uses_max_tokens_and_system_role(
    upstream: FakeUpstream, client: UpstreamClient, type_name: str
) -> None:
    upstream.enqueue(json_reply(openai_completion("Hi")))
    adapter = make_adapter(type_name, upstream.base_url + "/v1", client, credential=None)
    response = await adapter.complete("llama-3", TOOL_ROUND_TRIP, timeout=5)
    assert response.message.text == "Hi"
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert "authorization" not in sent.headers
    assert sent.json["max_tokens"] == 100
    assert "max_completion_tokens" not in sent.json
    # Self-hosted servers do not all know the developer role.
    assert sent.json["messages"][1] == {"role": "system", "content": "Answer in English."}


def test_simulated_is_registered() -> None:
    assert {"openai", "openai_compatible", "simulated"} <= adapter_types()


async def test_stream_usage_can_be_turned_off(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(sse_reply(*openai_text_stream("ok")))
    adapter = make_adapter(
        "openai_compatible", upstream.base_url + "/v1", client, settings={"stream_usage": "false"}
    )
    assert assemble(await drain(adapter.stream("m", HELLO, timeout=5))).text == "ok"
    assert "stream_options" not in upstream.last.json


async def test_whole_tool_calls_all_at_index_zero_and_stop_reason(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    # Some servers send each complete call in one chunk, all with index 0, then say "stop".
    def whole(call_id: str, city: str) -> dict[str, object]:
        return {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'},
        }

    upstream.enqueue(
        sse_reply(
            sse_event(openai_chunk({"role": "assistant", "tool_calls": [whole("c1", "Paris")]})),
            sse_event(openai_chunk({"tool_calls": [whole("c2", "Rome")]})),
            sse_event(openai_chunk({}, "stop")),
            sse_event("[DONE]"),
        )
    )
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    folded = assemble(await drain(adapter.stream("m", ASK_WEATHER, timeout=5)))
    assert folded.tool_calls == {
        0: {"id": "c1", "name": "get_weather", "arguments": PARIS_ARGS},
        1: {"id": "c2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    assert folded.finish_reason is FinishReason.TOOL_CALLS
    assert folded.usage is None


async def test_tool_calls_with_stop_reason_and_missing_ids(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    body = openai_completion(None, tool_calls=[("", "get_weather", PARIS_ARGS)], finish_reason="stop")
    upstream.enqueue(json_reply(body))
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    response = await adapter.complete("m", ASK_WEATHER, timeout=5)
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert response.message.tool_calls[0].id.startswith("call_")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # vLLM, older: flat with object "error".
        (
            400,
            {"object": "error", "message": "bad", "type": "BadRequestError", "code": 400},
            UpstreamBadRequest,
        ),
        # vLLM, current: nested with an int code.
        (
            500,
            {"error": {"message": "boom", "type": "InternalServerError", "code": 500}},
            UpstreamUnavailable,
        ),
        # TGI: error as text.
        (422, {"error": "Input validation error", "error_type": "validation"}, UpstreamBadRequest),
    ],
)
async def test_error_shapes(
    upstream: FakeUpstream,
    client: UpstreamClient,
    status: int,
    body: dict[str, object],
    expected: type[Exception],
) -> None:
    upstream.enqueue(json_reply(body, status))
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    with pytest.raises(expected):
        await adapter.complete("m", HELLO, timeout=5)


async def test_embeddings(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply({"data": [{"index": 0, "embedding": [1.0, 2.0]}], "model": "bge"}))
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    result = await adapter.embed("bge", EmbedRequest(inputs=("x",)), timeout=5)
    assert result.vectors == ((1.0, 2.0),)
    assert result.usage is None
    assert upstream.last.path == "/v1/embeddings"


async def test_embeddings_count_mismatch_is_a_protocol_error(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(json_reply({"data": [], "usage": {"prompt_tokens": 1}}))
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    with pytest.raises(UpstreamProtocolError):
        await adapter.embed("bge", EmbedRequest(inputs=("x",)), timeout=5)


async def test_auto_tool_choice_is_left_to_the_server_default(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(json_reply(openai_completion("ok")), json_reply(openai_completion("ok")))
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    auto = ChatRequest(
        messages=ASK_WEATHER.messages, tools=ASK_WEATHER.tools, tool_choice=ToolChoice(mode="auto")
    )
    await adapter.complete("m", auto, timeout=5)
    assert "tool_choice" not in upstream.last.json
    none = ChatRequest(
        messages=ASK_WEATHER.messages, tools=ASK_WEATHER.tools, tool_choice=ToolChoice(mode="none")
    )
    await adapter.complete("m", none, timeout=5)
    assert upstream.last.json["tool_choice"] == "none"


async def test_continuous_usage_on_every_chunk_is_not_summed(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    # vLLM's continuous_usage_stats puts a running total on every chunk.
    def with_usage(chunk: dict[str, object], completion: int) -> bytes:
        chunk["usage"] = {"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5 + completion}
        return sse_event(chunk)

    upstream.enqueue(
        sse_reply(
            with_usage(openai_chunk({"role": "assistant", "content": "a"}), 1),
            with_usage(openai_chunk({"content": "b"}), 2),
            with_usage(openai_chunk({}, "stop"), 2),
            sse_event("[DONE]"),
        )
    )
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    folded = assemble(await drain(adapter.stream("m", HELLO, timeout=5)))
    assert folded.text == "ab"
    assert folded.usage == Usage(input_tokens=5, output_tokens=2)
