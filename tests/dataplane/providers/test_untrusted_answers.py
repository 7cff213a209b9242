"""Answers a provider got wrong or that are not answers: refusals, invalid tool-call arguments,
Anthropic's paused turns, and tool schemas Gemini's OpenAPI subset would reject."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dataplane.chat import ChatRequest, EmbedRequest, FinishReason, ResponseFormat, ToolDefinition
from dataplane.errors import UpstreamBadRequest, UpstreamProtocolError, UpstreamUnavailable
from dataplane.providers.gemini_schema import gemini_schema
from dataplane.upstream import UpstreamClient

from .canned import (
    anthropic_event,
    anthropic_message,
    anthropic_stream,
    gemini_response,
    ollama_response,
    openai_chunk,
    openai_completion,
)
from .fakes import FakeUpstream, Reply, json_reply, raw_reply, sse_event, sse_reply
from .samples import ASK_WEATHER, HELLO, system, user
from .streams import assemble, drain, make_adapter

REFUSAL = "I can't help with that."

# -- OpenAI refusals ------------------------------------------------------------------------


async def test_a_refusal_is_the_text_with_finish_content_filter(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    body = openai_completion(None)
    body["choices"][0]["message"]["refusal"] = REFUSAL
    upstream.enqueue(json_reply(body))
    response = await make_adapter("openai", upstream.base_url, client).complete("gpt-x", HELLO, timeout=5)
    assert response.message.text == REFUSAL
    assert response.finish_reason is FinishReason.CONTENT_FILTER


async def test_a_streamed_refusal_is_the_text_with_finish_content_filter(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    frames = [
        sse_event(openai_chunk({"role": "assistant", "content": None, "refusal": ""})),
        sse_event(openai_chunk({"refusal": "I can't "})),
        sse_event(openai_chunk({"refusal": "help with that."})),
        sse_event(openai_chunk({}, "stop")),
        sse_event("[DONE]"),
    ]
    upstream.enqueue(sse_reply(*frames))
    folded = assemble(
        await drain(make_adapter("openai", upstream.base_url, client).stream("g", HELLO, timeout=5))
    )
    assert folded.text == REFUSAL
    assert folded.finish_reason is FinishReason.CONTENT_FILTER


async def test_a_null_refusal_changes_nothing(upstream: FakeUpstream, client: UpstreamClient) -> None:
    body = openai_completion("Hello!")
    body["choices"][0]["message"]["refusal"] = None
    upstream.enqueue(json_reply(body))
    response = await make_adapter("openai", upstream.base_url, client).complete("gpt-x", HELLO, timeout=5)
    assert (response.message.text, response.finish_reason) == ("Hello!", FinishReason.STOP)


# -- invalid tool-call arguments are malformed output ----------------------------------------

BAD_ARGUMENTS = ['{"city": "Par', "[1, 2]", "42", '"Paris"']


@pytest.mark.parametrize("arguments", BAD_ARGUMENTS)
async def test_openai_tool_arguments_must_be_a_json_object(
    upstream: FakeUpstream, client: UpstreamClient, arguments: str
) -> None:
    upstream.enqueue(
        json_reply(
            openai_completion(
                None, tool_calls=[("call_1", "get_weather", arguments)], finish_reason="tool_calls"
            )
        )
    )
    with pytest.raises(UpstreamProtocolError, match="tool call arguments are not"):
        await make_adapter("openai", upstream.base_url, client).complete("g", ASK_WEATHER, timeout=5)


@pytest.mark.parametrize("arguments", BAD_ARGUMENTS)
async def test_streamed_openai_tool_arguments_are_checked_whole_before_the_finish(
    upstream: FakeUpstream, client: UpstreamClient, arguments: str
) -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    half = len(arguments) // 2
    frames = [
        sse_event(openai_chunk({"role": "assistant", "tool_calls": [call]})),
        sse_event(openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]})),
        sse_event(openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]})),
        sse_event(openai_chunk({}, "tool_calls")),
        sse_event("[DONE]"),
    ]
    await refused_before_the_finish("openai", frames, upstream, client)


async def refused_before_the_finish(
    type_name: str, frames: list[bytes], upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """The stream of ``frames`` ends with the invalid-arguments error, and no finish went out first."""
    upstream.enqueue(sse_reply(*frames))
    received: list[Any] = []
    with pytest.raises(UpstreamProtocolError, match="tool call arguments are not"):
        await drain(
            make_adapter(type_name, upstream.base_url, client).stream("m", ASK_WEATHER, timeout=5),
            into=received,
        )
    assert all(chunk.finish_reason is None for chunk in received), "no finish goes out before the check"


async def test_empty_openai_tool_arguments_mean_an_empty_object(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(
        json_reply(openai_completion(None, tool_calls=[("call_1", "now", "")], finish_reason="tool_calls"))
    )
    response = await make_adapter("openai", upstream.base_url, client).complete("g", ASK_WEATHER, timeout=5)
    assert response.message.tool_calls[0].arguments == "{}"


async def test_gemini_args_that_are_not_an_object_are_malformed(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    body = gemini_response(None, calls=[("get_weather", {})])
    body["candidates"][0]["content"]["parts"][0]["functionCall"]["args"] = ["Paris"]
    upstream.enqueue(json_reply(body))
    with pytest.raises(UpstreamProtocolError, match="tool call arguments are not a JSON object"):
        await make_adapter("gemini", upstream.base_url, client).complete("g", ASK_WEATHER, timeout=5)


async def test_ollama_arguments_of_invalid_json_text_are_malformed(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    body = ollama_response("", calls=[("get_weather", {})])
    body["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": '
    upstream.enqueue(json_reply(body))
    with pytest.raises(UpstreamProtocolError, match="tool call arguments are not valid JSON"):
        await make_adapter("ollama", upstream.base_url, client).complete("llama", ASK_WEATHER, timeout=5)


async def test_anthropic_tool_input_that_is_not_an_object_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    body = anthropic_message(None, tool_uses=[("toolu_1", "get_weather", {})], stop_reason="tool_use")
    body["content"][0]["input"] = "Paris"
    upstream.enqueue(json_reply(body))
    with pytest.raises(UpstreamProtocolError, match="tool call arguments are not"):
        await make_adapter("anthropic", upstream.base_url, client).complete("c", ASK_WEATHER, timeout=5)


@pytest.mark.parametrize("shape", ["never-stopped", "restarted-at-its-index"])
async def test_streamed_anthropic_tool_input_is_checked_even_if_its_block_never_stops(
    upstream: FakeUpstream, client: UpstreamClient, shape: str
) -> None:
    """Arguments were checked only at ``content_block_stop``: a stream that went on to its
    finish and ``message_stop`` without one (or started another tool block at the same index)
    handed the caller ``{"city": `` as a tool call's arguments."""
    frames = anthropic_stream(tool_uses=[("toolu_1", "get_weather", ['{"city": '])], stop_reason="tool_use")
    stop = anthropic_event({"type": "content_block_stop", "index": 0})
    at = frames.index(stop)
    if shape == "never-stopped":
        del frames[at]
    else:
        block = {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}}
        frames.insert(
            at, anthropic_event({"type": "content_block_start", "index": 0, "content_block": block})
        )
    await refused_before_the_finish("anthropic", frames, upstream, client)


# -- streams that end at their terminator without an answer ------------------------------------


@pytest.mark.parametrize(
    ("type_name", "frames", "problem"),
    [
        pytest.param("openai", [sse_event("[DONE]")], "stream ended without a choice", id="openai-done"),
        pytest.param(
            "openai",
            [
                sse_event(openai_chunk(usage={"prompt_tokens": 3, "completion_tokens": 0})),
                sse_event("[DONE]"),
            ],
            "stream ended without a choice",
            id="openai-usage-then-done",
        ),
        pytest.param(
            "anthropic",
            [anthropic_event({"type": "ping"}), anthropic_event({"type": "message_stop"})],
            "stream ended without message_start",
            id="anthropic-stop",
        ),
    ],
)
async def test_a_stream_that_ends_before_any_answer_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, type_name: str, frames: list[bytes], problem: str
) -> None:
    """A bare terminator was served as an empty answer (OK, nothing to fall back from), where
    a unary answer with no choices is malformed output."""
    upstream.enqueue(sse_reply(*frames))
    with pytest.raises(UpstreamProtocolError, match=problem):
        await drain(make_adapter(type_name, upstream.base_url, client).stream("m", HELLO, timeout=5))


# -- nothing of the answer after its finish ----------------------------------------------------

AFTER_FINISH = {
    "tool-call": {
        "tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "rm", "arguments": "{}"}}]
    },
    "text": {"content": " and more"},
}


@pytest.mark.parametrize("late", sorted(AFTER_FINISH))
async def test_openai_stream_content_after_the_finish_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, late: str
) -> None:
    """A tool call sent after finish "stop" reached the caller, unchecked, in an answer
    finished STOP. After the finish only usage and [DONE] may come."""
    frames = [
        sse_event(openai_chunk({"content": "Hi"})),
        sse_event(openai_chunk({}, "stop")),
        sse_event(openai_chunk(AFTER_FINISH[late])),
        sse_event("[DONE]"),
    ]
    upstream.enqueue(sse_reply(*frames))
    with pytest.raises(UpstreamProtocolError, match=r"malformed output \(answer content after its finish"):
        await drain(make_adapter("openai", upstream.base_url, client).stream("g", HELLO, timeout=5))


async def test_openai_stream_usage_and_a_repeated_empty_finish_after_the_finish_are_accepted(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    frames = [
        sse_event(openai_chunk({"content": "Hi"})),
        sse_event(openai_chunk({}, "stop")),
        sse_event(openai_chunk({}, "stop")),
        sse_event(openai_chunk(usage={"prompt_tokens": 3, "completion_tokens": 1})),
        sse_event("[DONE]"),
    ]
    upstream.enqueue(sse_reply(*frames))
    chunks = await drain(make_adapter("openai", upstream.base_url, client).stream("g", HELLO, timeout=5))
    folded = assemble(chunks)
    assert (folded.text, folded.finish_reason, folded.finish_count) == ("Hi", FinishReason.STOP, 1)
    assert folded.usage is not None
    assert folded.usage.output_tokens == 1


# -- embedding values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("NaN", "NaN and Infinity are not JSON"),
        ("Infinity", "NaN and Infinity are not JSON"),
        ("-Infinity", "NaN and Infinity are not JSON"),
        ("1e300", "holds a value that is not a finite float32"),
        ("-3.5e38", "holds a value that is not a finite float32"),
    ],
)
async def test_an_embedding_value_no_32_bit_float_holds_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, value: str, problem: str
) -> None:
    """Served as it came, 1e300 made the HTTP door's base64 packing raise after the request was
    recorded as served, and became infinity over gRPC; NaN went out as null or NaN (NaN and
    Infinity, which are no JSON, are now refused as the document is parsed)."""
    upstream.enqueue(raw_reply('{"data": [{"index": 0, "embedding": [0.5, ' + value + "]}]}"))
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    with pytest.raises(UpstreamProtocolError, match=problem):
        await adapter.embed("bge", EmbedRequest(inputs=("x",)), timeout=5)


async def test_embedding_values_within_32_bit_range_are_served(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(raw_reply('{"data": [{"index": 0, "embedding": [-3.4e38, 0, 3.4e38, 1e-50]}]}'))
    adapter = make_adapter("openai_compatible", upstream.base_url + "/v1", client)
    result = await adapter.embed("bge", EmbedRequest(inputs=("x",)), timeout=5)
    assert result.vectors == ((-3.4e38, 0.0, 3.4e38, 1e-50),)


# -- what an answer's Content-Type charset names ------------------------------------------------

PLUS_TEXT = "Hel+2AA-lo"
"""Plain text in UTF-8; in UTF-7 a lone surrogate, which no UTF-8 encoder can write."""


@pytest.mark.parametrize("charset", ["base64", "rot13", "zlib", "idna", "utf-7", "utf-16"])
async def test_a_charset_that_cannot_decode_any_bytes_safely_is_read_as_utf_8(
    upstream: FakeUpstream, client: UpstreamClient, charset: str
) -> None:
    """A charset Python knows was used whatever it was: codecs that are not text encodings
    (LookupError), refuse errors="replace" (UnicodeError), cannot start a stream without a BOM,
    or make lone surrogates (``utf-7``) ended the request with an error no breaker counts and no
    fallback follows (INTERNAL at the node), or an answer no encoder could write."""
    adapter = make_adapter("openai", upstream.base_url, client)
    upstream.enqueue(
        raw_reply(
            json.dumps(openai_completion(PLUS_TEXT)), content_type=f"application/json; charset={charset}"
        )
    )
    assert (await adapter.complete("g", HELLO, timeout=5)).message.text == PLUS_TEXT
    frames = [
        sse_event(openai_chunk({"content": PLUS_TEXT})),
        sse_event(openai_chunk({}, "stop")),
        sse_event("[DONE]"),
    ]
    upstream.enqueue(Reply(body=frames, content_type=f"text/event-stream; charset={charset}"))
    assert assemble(await drain(adapter.stream("g", HELLO, timeout=5))).text == PLUS_TEXT


async def test_a_charset_that_decodes_safely_is_still_honoured(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    adapter = make_adapter("openai", upstream.base_url, client)
    body = json.dumps(openai_completion("café"), ensure_ascii=False).encode("latin-1")
    upstream.enqueue(Reply(body=(body,), content_type="application/json; charset=ISO-8859-1"))
    assert (await adapter.complete("g", HELLO, timeout=5)).message.text == "café"


# -- JSON nested past the recursion limit inside an answer --------------------------------

NESTED_1010 = "[" * 1010 + "]" * 1010
"""Deeper than ``json`` (re)parses or encodes under the default recursion limit, within orjson's 1024."""


async def test_tool_arguments_nested_too_deeply_are_malformed(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    plain = openai_completion(
        None, tool_calls=[("call_1", "get_weather", '{"a": ' + "[" * 20_000)], finish_reason="tool_calls"
    )
    anthropic = anthropic_message(None, tool_uses=[("toolu_1", "get_weather", {})], stop_reason="tool_use")
    anthropic["content"][0]["input"] = {"a": json.loads("[" * 900 + "]" * 900)}
    upstream.enqueue(json_reply(plain))
    with pytest.raises(UpstreamProtocolError, match="malformed output"):
        await make_adapter("openai", upstream.base_url, client).complete("g", ASK_WEATHER, timeout=5)
    upstream.enqueue(
        raw_reply(json.dumps(anthropic).replace("[" * 900, "[" * 1010).replace("]" * 900, "]" * 1010))
    )
    with pytest.raises(UpstreamProtocolError, match="malformed output"):
        await make_adapter("anthropic", upstream.base_url, client).complete("c", ASK_WEATHER, timeout=5)


async def test_an_error_body_nested_too_deeply_to_re_encode_is_still_the_error_it_names(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    body = '{"error": {"message": "boom", "type": "server_error", "detail": ' + NESTED_1010 + "}}"
    upstream.enqueue(raw_reply(body), sse_reply(f"data: {body}\n\n".encode()))
    adapter = make_adapter("openai", upstream.base_url, client)
    with pytest.raises(UpstreamUnavailable, match=r"upstream failed \(in-band error\)"):
        await adapter.complete("g", HELLO, timeout=5)
    with pytest.raises(UpstreamUnavailable, match=r"upstream failed \(in-band error\)"):
        await drain(adapter.stream("g", HELLO, timeout=5))


async def test_a_block_index_of_infinity_is_malformed(upstream: FakeUpstream, client: UpstreamClient) -> None:
    """``1e999`` is valid JSON, read as infinity; ``int()`` of it raises OverflowError."""
    frames = [frame.replace(b'"index": 0', b'"index": 1e999') for frame in anthropic_stream("Hi")]
    upstream.enqueue(sse_reply(*frames))
    with pytest.raises(UpstreamProtocolError, match="malformed output"):
        await drain(make_adapter("anthropic", upstream.base_url, client).stream("c", HELLO, timeout=5))


# -- only a 2xx is an answer ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_carrying_an_answer_is_not_served(
    upstream: FakeUpstream, client: UpstreamClient, status: int
) -> None:
    """A redirect's body is not the provider's answer, however well formed (the node follows
    no redirect); plain and streamed, and the connection serves the next call."""
    location = {"Location": "http://127.0.0.1:9/elsewhere"}
    upstream.enqueue(
        json_reply(openai_completion("forged"), status=status, headers=location),
        sse_reply(*(sse_event(openai_chunk({"content": "forged"})), sse_event("[DONE]")), status=status),
        json_reply(openai_completion("Hello!")),
    )
    adapter = make_adapter("openai", upstream.base_url, client)
    redirect = rf"malformed output \(a redirect \(HTTP {status}\), which the node does not follow\)"
    with pytest.raises(UpstreamProtocolError, match=redirect):
        await adapter.complete("g", HELLO, timeout=5)
    with pytest.raises(UpstreamProtocolError, match=redirect):
        await drain(adapter.stream("g", HELLO, timeout=5))
    assert (await adapter.complete("g", HELLO, timeout=5)).message.text == "Hello!"


# -- Anthropic pause_turn: an incomplete answer ----------------------------------------------


async def test_a_paused_anthropic_turn_finishes_as_length_plainly_and_streamed(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    adapter = make_adapter("anthropic", upstream.base_url, client)
    upstream.enqueue(
        json_reply(anthropic_message("Searching...", stop_reason="pause_turn")),
        sse_reply(*anthropic_stream("Searching...", stop_reason="pause_turn")),
    )
    plain = await adapter.complete("c", HELLO, timeout=5)
    streamed = assemble(await drain(adapter.stream("c", HELLO, timeout=5)))
    assert (plain.message.text, plain.finish_reason) == ("Searching...", FinishReason.LENGTH)
    assert (streamed.text, streamed.finish_reason) == ("Searching...", FinishReason.LENGTH)


# -- Gemini tool schemas -------------------------------------------------------------------

PYDANTIC_STYLE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://example.com/booking",
    "type": "object",
    "additionalProperties": False,
    "$defs": {
        "City": {"type": "string", "description": "A city", "examples": ["Paris"]},
        "Stay": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "city": {"$ref": "#/$defs/City"},
                "nights": {"type": "integer", "exclusiveMinimum": 0},
            },
            "required": ["city"],
        },
    },
    "properties": {
        "stays": {"type": "array", "items": {"$ref": "#/$defs/Stay"}, "minItems": 1, "uniqueItems": True},
        "note": {"type": ["string", "null"], "default": None, "maxLength": 200},
        "class": {"enum": ["economy", "business", None]},
        "seats": {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]},
        "loyalty": {"allOf": [{"$ref": "#/definitions/Card"}], "description": "the card to credit"},
        "version": {"const": 2},
    },
    "definitions": {
        "Card": {"type": "object", "properties": {"id": {"type": "string"}}, "patternProperties": {}}
    },
    "required": ["stays"],
}

GEMINI_FORM = {
    "type": "object",
    "properties": {
        "stays": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "A city", "example": "Paris"},
                    "nights": {"type": "integer"},
                },
                "required": ["city"],
            },
        },
        "note": {"type": "string", "nullable": True, "default": None, "maxLength": 200},
        "class": {"enum": ["economy", "business"], "nullable": True},
        "seats": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]},
        "loyalty": {
            "type": "object",
            "description": "the card to credit",
            "properties": {"id": {"type": "string"}},
        },
        "version": {"enum": ["2"]},
    },
    "required": ["stays"],
}


def test_json_schema_becomes_geminis_subset() -> None:
    assert gemini_schema(PYDANTIC_STYLE, "parameters of tool 'book'") == GEMINI_FORM


async def test_gemini_tool_parameters_and_response_schema_are_translated_on_the_wire(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    request = ChatRequest(
        messages=(system("Be brief."), user("Book Paris")),
        tools=(ToolDefinition(name="book", description="Book stays", parameters=PYDANTIC_STYLE),),
        response_format=ResponseFormat(type="json_schema", name="r", schema=PYDANTIC_STYLE),
    )
    upstream.enqueue(json_reply(gemini_response("ok")))
    await make_adapter("gemini", upstream.base_url, client).complete("g", request, timeout=5)
    sent = upstream.last.json
    assert sent["tools"][0]["functionDeclarations"][0]["parameters"] == GEMINI_FORM
    assert sent["generationConfig"]["responseSchema"] == GEMINI_FORM
    text = json.dumps(sent)
    for field in ("$schema", "$id", "$defs", "definitions", "additionalProperties", "$ref", "oneOf", "allOf"):
        assert field not in text


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (
            {"properties": {"x": {"$ref": "https://example.com/x.json"}}},
            "$.properties.x.$ref: only local references",
        ),
        (
            {"properties": {"x": {"$ref": "#/$defs/Nope"}}},
            "$.properties.x.$ref: '#/$defs/Nope' names no definition",
        ),
        (
            {
                "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
                "$ref": "#/$defs/Node",
            },
            "$.properties.next.$ref: '#/$defs/Node' is recursive",
        ),
        ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, "$.allOf: only a one-element allOf"),
        ({"type": "array", "items": [{"type": "string"}]}, "$.items: tuple items"),
        ({"properties": {"x": 7}}, "$.properties.x: a schema must be an object"),
    ],
)
async def test_what_gemini_cannot_express_is_refused_naming_the_tool_and_path(
    upstream: FakeUpstream, client: UpstreamClient, schema: dict[str, Any], problem: str
) -> None:
    request = ChatRequest(messages=(user("hi"),), tools=(ToolDefinition(name="t", parameters=schema),))
    with pytest.raises(UpstreamBadRequest) as caught:
        await make_adapter("gemini", upstream.base_url, client).complete("g", request, timeout=5)
    assert str(caught.value).startswith(f"gemini: parameters of tool 't': {problem}")
    assert not upstream.requests


def test_a_reference_explosion_is_refused() -> None:
    defs: dict[str, Any] = {"L0": {"type": "string"}}
    for i in range(1, 20):
        defs[f"L{i}"] = {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/L{i - 1}"}, "b": {"$ref": f"#/$defs/L{i - 1}"}},
        }
    with pytest.raises(UpstreamBadRequest, match="more than 5000 nodes"):
        gemini_schema({"$defs": defs, "$ref": "#/$defs/L19"}, "parameters of tool 'boom'")
