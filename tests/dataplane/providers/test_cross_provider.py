"""Every adapter, one table: same request in, same normalized answer out, same failure behaviour.

Each ``Wire`` row says how one provider answers "Hello!" and a
``get_weather(city=Paris)`` call, plainly and streamed. The tests then
assert what must hold whatever the provider: identical normalized results,
the first chunk before the upstream finishes, closing or cancelling the
stream closes the upstream connection, and bad upstream output ends in a
``ProviderError`` quickly, never a hang.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest

from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    StreamChunk,
    TextPart,
)
from dataplane.errors import (
    ProviderError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from dataplane.providers.base import ProviderAdapter
from dataplane.providers.registry import adapter_types
from dataplane.upstream import UpstreamClient
from tests.helpers import eventually

from . import canned
from .fakes import (
    ABORT,
    HANG,
    FakeUpstream,
    Reply,
    Step,
    Wait,
    closed_port_url,
    json_reply,
    ndjson_reply,
    raw_reply,
    sse_event,
    sse_reply,
)
from .samples import ASK_WEATHER, HELLO, PARIS_ARGS
from .streams import assemble, drain, make_adapter

PARIS = {"city": "Paris"}


@dataclass(frozen=True)
class Wire:
    """How one provider type says the two canonical answers."""

    type_name: str
    path: str
    text: Callable[[], Reply]
    tool: Callable[[], Reply]
    text_stream: Callable[[Sequence[str]], list[bytes]]
    tool_stream: Callable[[], list[bytes]]
    stream_reply: Callable[..., Reply] = sse_reply
    unknown_event: bytes = b""
    """An event of a type this provider might add later; must be ignored."""
    server_error: dict[str, object] = field(default_factory=dict)
    """This provider's error body for an internal failure."""
    settings: dict[str, str] = field(default_factory=dict)

    def adapter(self, base_url: str, client: UpstreamClient) -> ProviderAdapter:
        return make_adapter(self.type_name, base_url + self.path, client, settings=self.settings)


def _openai_tool_stream() -> list[bytes]:
    start = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    return [
        sse_event(canned.openai_chunk({"role": "assistant", "content": None, "tool_calls": [start]})),
        sse_event(
            canned.openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]})
        ),
        sse_event(canned.openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})),
        sse_event(canned.openai_chunk({}, "tool_calls")),
        sse_event(canned.openai_chunk(usage={"prompt_tokens": 12, "completion_tokens": 3})),
        sse_event("[DONE]"),
    ]


def _openai_wire(type_name: str, path: str, **settings: str) -> Wire:
    return Wire(
        type_name=type_name,
        path=path,
        text=lambda: json_reply(canned.openai_completion("Hello!")),
        tool=lambda: json_reply(
            canned.openai_completion(
                None, tool_calls=[("call_1", "get_weather", PARIS_ARGS)], finish_reason="tool_calls"
            )
        ),
        text_stream=lambda pieces: canned.openai_text_stream(*pieces),
        tool_stream=_openai_tool_stream,
        server_error={"error": {"message": "The server had an error", "type": "server_error", "code": None}},
        unknown_event=sse_event(
            {"object": "chat.completion.chunk", "choices": [], "usage": None}, event="novel"
        ),
        settings=dict(settings),
    )


WIRES: tuple[Wire, ...] = (
    _openai_wire("openai", "/v1"),
    _openai_wire("openai_compatible", "/v1"),
    _openai_wire("simulated", "/v1"),
    _openai_wire("azure_openai", "", api_version="2024-10-21"),
    _openai_wire("mistral", "/v1"),
    Wire(
        type_name="anthropic",
        path="",
        text=lambda: json_reply(canned.anthropic_message("Hello!")),
        tool=lambda: json_reply(
            canned.anthropic_message(
                None, tool_uses=[("toolu_1", "get_weather", PARIS)], stop_reason="tool_use"
            )
        ),
        text_stream=lambda pieces: canned.anthropic_stream(*pieces),
        tool_stream=lambda: canned.anthropic_stream(
            tool_uses=[("toolu_1", "get_weather", ['{"city": ', '"Paris"}'])], stop_reason="tool_use"
        ),
        unknown_event=canned.anthropic_event({"type": "future_event", "data": {}}),
        server_error=canned.anthropic_error("api_error", "Internal server error"),
    ),
    Wire(
        type_name="gemini",
        path="/v1beta",
        text=lambda: json_reply(canned.gemini_response("Hello!")),
        tool=lambda: json_reply(canned.gemini_response(None, calls=[("get_weather", PARIS)])),
        text_stream=lambda pieces: canned.gemini_stream(*pieces),
        tool_stream=lambda: canned.gemini_stream(calls=[("get_weather", PARIS)]),
        unknown_event=b": a comment line\n\n",
        server_error=canned.gemini_error(500, "INTERNAL", "An internal error has occurred."),
    ),
    Wire(
        type_name="ollama",
        path="",
        text=lambda: json_reply(canned.ollama_response("Hello!")),
        tool=lambda: json_reply(canned.ollama_response("", calls=[("get_weather", PARIS)])),
        text_stream=lambda pieces: canned.ollama_stream(*pieces),
        tool_stream=lambda: canned.ollama_stream(calls=[("get_weather", PARIS)]),
        stream_reply=ndjson_reply,
        unknown_event=b"\n",
        server_error={"error": "an unexpected error occurred"},
    ),
)

by_type = pytest.mark.parametrize("wire", WIRES, ids=[w.type_name for w in WIRES])


def test_every_registered_type_is_covered() -> None:
    assert adapter_types() == {w.type_name for w in WIRES}


@pytest.mark.parametrize("type_name", ["azure_openai", "openai_compatible", "simulated"])
def test_types_without_a_default_url_need_one(client: UpstreamClient, type_name: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        make_adapter(type_name, "", client)


def test_types_with_a_default_url_use_it(client: UpstreamClient) -> None:
    adapter = make_adapter("anthropic", "", client)
    assert adapter.base_url == "https://api.anthropic.com"  # type: ignore[attr-defined]


def _shape(response: ChatResponse) -> tuple[object, ...]:
    calls = tuple((c.name, c.arguments, bool(c.id)) for c in response.message.tool_calls)
    return (
        response.message.role,
        response.message.text,
        calls,
        response.finish_reason,
        response.usage is not None,
    )


@by_type
async def test_same_request_same_normalized_response(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(wire.text(), wire.tool())
    adapter = wire.adapter(upstream.base_url, client)
    text = await adapter.complete("m", HELLO, timeout=5)
    tool = await adapter.complete("m", ASK_WEATHER, timeout=5)
    assert _shape(text) == (Role.ASSISTANT, "Hello!", (), FinishReason.STOP, True)
    assert _shape(tool) == (
        Role.ASSISTANT,
        tool.message.text,
        (("get_weather", PARIS_ARGS, True),),
        FinishReason.TOOL_CALLS,
        True,
    )
    assert tool.message.text == ""


_OPENAI_STYLE = (
    "openai", "openai_compatible", "simulated", "azure_openai", "mistral",
)  # fmt: skip
"""The types whose wire format has a place for a json_schema format's description (and an
image's detail): OpenAI's."""


@by_type
async def test_a_schemas_description_is_sent_where_the_wire_format_has_a_place_for_it(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    # Checked and dropped, the model never saw the caller's guidance for the answer. Where a
    # wire format has no place for it, it is not sent at all (not smuggled into the schema).
    upstream.enqueue(wire.text())
    fmt = ResponseFormat("json_schema", "person", {"type": "object"}, True, "an anagram of Tlaloc")
    await wire.adapter(upstream.base_url, client).complete(
        "m", replace(HELLO, response_format=fmt), timeout=5
    )
    body = upstream.last.json
    if wire.type_name in _OPENAI_STYLE:
        assert body["response_format"]["json_schema"]["description"] == fmt.description
    else:
        assert "Tlaloc" not in json.dumps(body)


@by_type
async def test_an_images_original_detail_is_sent_where_the_wire_format_has_one(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    # OpenAI's "original" (not downscaled) was refused by both doors as not auto, low or
    # high. OpenAI-style wire formats carry it as it came; the others have no detail at all.
    upstream.enqueue(wire.text())
    image = ImagePart(data=b"\x89PNG", media_type="image/png", detail="original")
    asked = Message(Role.USER, (TextPart("what is this?"), image))
    await wire.adapter(upstream.base_url, client).complete("m", ChatRequest((asked,)), timeout=5)
    body = json.dumps(upstream.last.json)
    if wire.type_name in _OPENAI_STYLE:
        assert upstream.last.json["messages"][0]["content"][1]["image_url"]["detail"] == "original"
    else:
        assert "original" not in body


@by_type
async def test_same_request_same_normalized_stream(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(
        wire.stream_reply(*wire.text_stream(["Hel", "lo!"])), wire.stream_reply(*wire.tool_stream())
    )
    adapter = wire.adapter(upstream.base_url, client)
    text = assemble(await drain(adapter.stream("m", HELLO, timeout=5)))
    tool = assemble(await drain(adapter.stream("m", ASK_WEATHER, timeout=5)))
    assert (text.text, text.tool_calls, text.finish_reason, text.finish_count) == (
        "Hello!",
        {},
        FinishReason.STOP,
        1,
    )
    assert text.usage is not None
    assert text.usage.input_tokens > 0
    assert [(c["name"], c["arguments"]) for c in tool.tool_calls.values()] == [("get_weather", PARIS_ARGS)]
    assert tool.finish_reason is FinishReason.TOOL_CALLS
    assert tool.text == ""


@by_type
async def test_unknown_events_are_ignored(wire: Wire, upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = wire.text_stream(["Hel", "lo!"])
    upstream.enqueue(wire.stream_reply(frames[0], wire.unknown_event, *frames[1:]))
    folded = assemble(await drain(wire.adapter(upstream.base_url, client).stream("m", HELLO, timeout=5)))
    assert folded.text == "Hello!"


def _through_first_piece(frames: list[bytes], piece: str) -> tuple[list[Step], list[Step]]:
    """Split ``frames`` right after the frame that carries ``piece``."""
    cut = next(i for i, f in enumerate(frames) if piece.encode() in f) + 1
    return list(frames[:cut]), list(frames[cut:])


async def _first_text(stream: object) -> StreamChunk:
    assert hasattr(stream, "__anext__")
    async with asyncio.timeout(5):
        while True:
            chunk: StreamChunk = await stream.__anext__()
            if chunk.text:
                return chunk


@by_type
async def test_first_chunk_arrives_before_the_upstream_finishes(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    release = asyncio.Event()
    head, tail = _through_first_piece(wire.text_stream(["first", "second"]), "first")
    upstream.enqueue(wire.stream_reply(*head, Wait(release), *tail))
    stream = wire.adapter(upstream.base_url, client).stream("m", HELLO, timeout=5)
    assert (await _first_text(stream)).text == "first"
    release.set()
    assert assemble(await drain(stream)).text == "second"


@by_type
async def test_closing_the_stream_closes_the_upstream(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    head, _ = _through_first_piece(wire.text_stream(["first", "second"]), "first")
    upstream.enqueue(wire.stream_reply(*head, HANG))
    stream = wire.adapter(upstream.base_url, client).stream("m", HELLO, timeout=30)
    await _first_text(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    await eventually(lambda: upstream.disconnects == 1, timeout=5, message="the upstream saw the disconnect")


@by_type
async def test_cancelling_the_consumer_closes_the_upstream(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    head, _ = _through_first_piece(wire.text_stream(["first", "second"]), "first")
    upstream.enqueue(wire.stream_reply(*head, HANG))
    got_text = asyncio.Event()

    async def consume() -> None:
        async for chunk in wire.adapter(upstream.base_url, client).stream("m", HELLO, timeout=30):
            if chunk.text:
                got_text.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await got_text.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: upstream.disconnects == 1, timeout=5, message="the upstream saw the disconnect")


@by_type
async def test_truncated_json_body(wire: Wire, upstream: FakeUpstream, client: UpstreamClient) -> None:
    body = bytes(wire.text().body[0])  # type: ignore[arg-type]
    upstream.enqueue(
        raw_reply(body[: len(body) // 2].decode()), raw_reply("<html>oops</html>", 200, "text/html")
    )
    adapter = wire.adapter(upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError):
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamProtocolError):
        await adapter.complete("m", HELLO, timeout=5)


_INPUT_TOKENS = {
    "anthropic": b'"input_tokens": 12',
    "gemini": b'"promptTokenCount": 12',
    "ollama": b'"prompt_eval_count": 12',
}
"""How each canned answer says its 12 input tokens (the OpenAI family: ``"prompt_tokens": 12``)."""


@by_type
@pytest.mark.parametrize("count", ["-1", "1e999", "1e300", "1000000001"])
async def test_a_token_count_no_bill_could_hold_is_malformed_output(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient, count: str
) -> None:
    """Usage is what the node bills and budgets by: a negative count would credit a tenant's
    budget, a vast one exhaust it, and ``1e999`` (infinity) used to escape as OverflowError."""
    field = _INPUT_TOKENS.get(wire.type_name, b'"prompt_tokens": 12')
    hostile = field.replace(b"12", count.encode())
    body = bytes(wire.text().body[0])  # type: ignore[arg-type]
    frames = [frame.replace(field, hostile) for frame in wire.text_stream(["Hello!"])]
    assert field in body
    assert any(hostile in frame for frame in frames)
    upstream.enqueue(raw_reply(body.replace(field, hostile).decode()), wire.stream_reply(*frames))
    adapter = wire.adapter(upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError, match="malformed output"):
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamProtocolError, match="malformed output"):
        await drain(adapter.stream("m", HELLO, timeout=5))


DEEP = "[" * 20_000 + "]" * 20_000
"""JSON nested past the interpreter's recursion limit, in 40 kB: far inside every size bound."""


@by_type
async def test_json_nested_too_deeply_is_malformed_output_not_an_internal_error(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    event = DEEP.encode() + b"\n" if wire.stream_reply is ndjson_reply else sse_event(DEEP)
    upstream.enqueue(raw_reply(DEEP), wire.stream_reply(event), raw_reply(DEEP, status=500))
    adapter = wire.adapter(upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError, match=r"malformed output \(JSON nested too deeply\)"):
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamProtocolError, match=r"malformed output \(JSON nested too deeply\)"):
        await drain(adapter.stream("m", HELLO, timeout=5))
    # An error answer that is not readable JSON is still classified from its status.
    with pytest.raises(UpstreamUnavailable, match=r"upstream failed \(HTTP 500\)"):
        await adapter.complete("m", HELLO, timeout=5)


@by_type
async def test_stream_ending_before_its_terminator(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    head, _ = _through_first_piece(wire.text_stream(["first", "second"]), "first")
    upstream.enqueue(wire.stream_reply(*head))
    received: list[StreamChunk] = []
    with pytest.raises(UpstreamProtocolError):
        await drain(wire.adapter(upstream.base_url, client).stream("m", HELLO, timeout=5), into=received)
    assert assemble(received).text == "first"


@by_type
async def test_stream_broken_mid_event(wire: Wire, upstream: FakeUpstream, client: UpstreamClient) -> None:
    head, tail = _through_first_piece(wire.text_stream(["first", "second"]), "first")
    half = bytes(tail[0])  # type: ignore[arg-type]
    upstream.enqueue(wire.stream_reply(*head, half[: len(half) // 2], ABORT))
    with pytest.raises((UpstreamProtocolError, UpstreamUnavailable)):
        await drain(wire.adapter(upstream.base_url, client).stream("m", HELLO, timeout=5))


@by_type
async def test_truncated_json_event(wire: Wire, upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = wire.text_stream(["first", "second"])
    broken = frames[0][: len(frames[0]) // 2].rstrip(b"\n") + b"\n\n"
    upstream.enqueue(wire.stream_reply(broken, *frames[1:]))
    with pytest.raises(UpstreamProtocolError):
        await drain(wire.adapter(upstream.base_url, client).stream("m", HELLO, timeout=5))


@by_type
async def test_unreachable_and_silent_upstreams(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    refused = wire.adapter(closed_port_url(), client)
    with pytest.raises(UpstreamUnavailable):
        await refused.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamUnavailable):
        await drain(refused.stream("m", HELLO, timeout=5))
    upstream.enqueue(Reply(body=(HANG,)), wire.stream_reply(HANG))
    silent = wire.adapter(upstream.base_url, client)
    with pytest.raises(UpstreamTimeout):
        await silent.complete("m", HELLO, timeout=0.2)
    with pytest.raises(UpstreamTimeout):
        await drain(silent.stream("m", HELLO, timeout=0.2))


@by_type
async def test_errors_never_carry_the_credential(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    from .streams import CREDENTIAL

    upstream.enqueue(json_reply({"error": {"message": f"bad key {CREDENTIAL}", "code": 401}}, 401))
    with pytest.raises(ProviderError) as caught:
        await wire.adapter(upstream.base_url, client).complete("m", HELLO, timeout=5)
    assert caught.value.kind == "auth"
    assert CREDENTIAL not in str(caught.value)
    assert CREDENTIAL not in (caught.value.body or "")


@by_type
async def test_ok_status_with_an_error_body(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(json_reply(wire.server_error), json_reply(wire.server_error))
    adapter = wire.adapter(upstream.base_url, client)
    with pytest.raises(UpstreamUnavailable) as plain:
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamUnavailable) as streamed:
        await drain(adapter.stream("m", HELLO, timeout=5))
    for caught in (plain, streamed):
        assert caught.value.retryable
        assert caught.value.http_status is None


@by_type
async def test_ok_status_with_an_html_page(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(raw_reply("<html><body>Gateway says hi</body></html>\n", 200, "text/html"))
    with pytest.raises(UpstreamProtocolError):
        await drain(wire.adapter(upstream.base_url, client).stream("m", HELLO, timeout=5))


# Valid JSON, wrong shapes: every field a provider reads is there, with the wrong type.
WRONG_SHAPE = {
    "choices": [{"index": 0, "message": "nope", "delta": {"tool_calls": ["nope"]}, "finish_reason": None}],
    "content": ["nope"],
    "type": "content_block_start",
    "index": 0,
    "content_block": "nope",
    "candidates": [{"content": {"parts": ["nope"]}}],
    "message": {"content": "x", "tool_calls": ["nope"]},
    "usage": {"prompt_tokens": "many"},
}


@by_type
async def test_wrong_shapes_are_protocol_errors(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    stream_line = b"data: " + json.dumps(WRONG_SHAPE).encode() + b"\n\n"
    if wire.stream_reply is ndjson_reply:
        stream_line = json.dumps(WRONG_SHAPE).encode() + b"\n"
    upstream.enqueue(json_reply(WRONG_SHAPE), wire.stream_reply(stream_line))
    adapter = wire.adapter(upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError):
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamProtocolError):
        await drain(adapter.stream("m", HELLO, timeout=5))


def _nameless(reply: Reply) -> Reply:
    """``reply`` with its tool call's name, wherever it stands, made empty."""
    body = [s.replace(b'"get_weather"', b'""') if isinstance(s, bytes) else s for s in reply.body]
    return Reply(reply.status, body, reply.content_type, reply.headers)


@by_type
async def test_a_tool_call_without_a_name_is_malformed_output(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """A call named "" was served as a call (finish ``tool_calls``) that no caller can run."""
    upstream.enqueue(_nameless(wire.tool()), _nameless(wire.stream_reply(*wire.tool_stream())))
    adapter = wire.adapter(upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError, match="a tool call has no name"):
        await adapter.complete("m", ASK_WEATHER, timeout=5)
    with pytest.raises(UpstreamProtocolError, match="a tool call has no name"):
        await drain(adapter.stream("m", ASK_WEATHER, timeout=5))


@by_type
async def test_configured_timeout_caps_the_callers(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(Reply(body=(HANG,)))
    adapter = make_adapter(
        wire.type_name, upstream.base_url + wire.path, client, settings=wire.settings, timeout_s=0.2
    )
    with pytest.raises(UpstreamTimeout):
        await adapter.complete("m", HELLO, timeout=30)
