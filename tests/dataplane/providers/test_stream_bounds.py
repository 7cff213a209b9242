"""What a streamed answer can make a decoder hold is bounded by the answer the caller gets: a
provider's tool-call indexes and usage objects are read as the few values they are, not kept
as they came."""

from __future__ import annotations

import tracemalloc

import pytest

from dataplane.chat import StreamChunk
from dataplane.errors import UpstreamProtocolError
from dataplane.upstream import UpstreamClient

from . import canned
from .canned import anthropic_event, anthropic_stream, openai_chunk
from .fakes import FakeUpstream, json_reply, sse_event, sse_reply
from .samples import ASK_WEATHER, HELLO
from .streams import assemble, drain, make_adapter
from .test_cross_provider import WIRES, Wire

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


def call_event(index: object, call_id: str) -> bytes:
    return sse_event(openai_chunk({"tool_calls": [{"index": index, "id": call_id, **CALL}]}))


@pytest.mark.parametrize(
    "index",
    ["0", "x" * 100_000, True, -1, 8192, 0.5, [0], {"i": 0}],
    ids=["digit-text", "long-text", "true", "negative", "too-large", "fraction", "list", "object"],
)
async def test_a_tool_call_index_that_is_not_a_small_whole_number_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, index: object
) -> None:
    """The index was a key of the calls so far whatever it was: a stream whose events each
    carried another megabyte-long string index held every one of them (255 MB for an answer
    counted as 2 kB)."""
    frames = [call_event(index, "call_1"), sse_event(openai_chunk({}, "tool_calls")), sse_event("[DONE]")]
    upstream.enqueue(sse_reply(*frames))
    adapter = make_adapter("openai", upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError, match=r"malformed output \(a tool call's index is not"):
        await drain(adapter.stream("g", ASK_WEATHER, timeout=5))


async def test_a_null_index_is_the_first(upstream: FakeUpstream, client: UpstreamClient) -> None:
    frames = [call_event(None, "call_1"), sse_event(openai_chunk({}, "tool_calls")), sse_event("[DONE]")]
    upstream.enqueue(sse_reply(*frames))
    adapter = make_adapter("openai", upstream.base_url, client)
    chunks = await drain(adapter.stream("g", ASK_WEATHER, timeout=5))
    assert [(d.index, d.id) for c in chunks for d in c.tool_calls] == [(0, "call_1")]


async def test_a_stream_of_more_tool_calls_than_a_request_may_carry_back_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """Each call (a new id at index 0 starts one) is held until the finish checks its arguments;
    their number was bounded only by the characters of answer they add."""
    calls = [call_event(0, f"c{i}") for i in range(8193)]
    upstream.enqueue(
        sse_reply(b"".join(calls), sse_event(openai_chunk({}, "tool_calls")), sse_event("[DONE]"))
    )
    adapter = make_adapter("openai", upstream.base_url, client)
    received: list[StreamChunk] = []
    with pytest.raises(UpstreamProtocolError, match=r"more than 8192 tool calls in one answer"):
        await drain(adapter.stream("g", ASK_WEATHER, timeout=10), into=received)
    assert len(received) == 8192, "every call up to the bound went out"


def usage_delta(n: int, keys: int) -> bytes:
    """A ``message_delta`` event (no finish yet) whose usage holds ``keys`` keys no other has."""
    usage = {"output_tokens": n, **{f"k{n}_{i}": 1 for i in range(keys)}}
    return anthropic_event({"type": "message_delta", "delta": {"stop_reason": None}, "usage": usage})


async def test_anthropic_usage_events_are_read_for_their_counts_only(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """Each ``message_delta`` usage object was merged whole into the usage kept so far: events
    of tens of thousands of distinct keys each (240 MB sent) held 1.36 GB. What the decoder
    holds at its peak is now one event's worth, not every event's."""
    frames = anthropic_stream("Hi", final_usage={"output_tokens": 9})
    events = [usage_delta(n, 50_000) for n in range(20)]  # 20 events of ~0.8 MB
    upstream.enqueue(sse_reply(*frames[:-2], *events, *frames[-2:]))
    adapter = make_adapter("anthropic", upstream.base_url, client)
    tracemalloc.start()
    try:
        chunks = await drain(adapter.stream("c", HELLO, timeout=30), timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    folded = assemble(chunks)
    assert folded.usage is not None
    assert (folded.usage.input_tokens, folded.usage.output_tokens) == (12, 9)
    assert peak < 50_000_000, f"{peak / 1e6:.0f} MB held for 16 MB of usage events"


@pytest.mark.parametrize(
    ("usage", "where"),
    [
        ('"lots"', "start"),
        ("[1]", "delta"),
        ('{"input_tokens": -5}', "start"),
        ('{"output_tokens": 1e300}', "delta"),
    ],
)
async def test_an_anthropic_stream_usage_that_is_no_count_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, usage: str, where: str
) -> None:
    """As a unary answer's usage: checked as each event comes, not only at the next ``message_delta``."""
    frames = anthropic_stream("Hi", start_usage={"input_tokens": 1})
    at, sent = (0, b'{"input_tokens": 1}') if where == "start" else (-2, b'{"output_tokens": 3}')
    assert sent in frames[at]
    frames[at] = frames[at].replace(sent, usage.encode())
    upstream.enqueue(sse_reply(*frames))
    adapter = make_adapter("anthropic", upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError, match="unexpected JSON shape"):
        await drain(adapter.stream("c", HELLO, timeout=5))


@pytest.mark.parametrize(
    "index",
    ['"1"', "1.9", "true", "-1", str(1 << 31), '"x"', "[1]"],
    ids=["digit-text", "fraction", "true", "negative", "too-large", "text", "list"],
)
@pytest.mark.parametrize("event", ["content_block_start", "content_block_delta", "content_block_stop"])
async def test_an_anthropic_block_index_that_is_not_a_whole_number_in_range_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, index: str, event: str
) -> None:
    """``int()`` read ``"1"``, ``1.9`` and ``true`` as the block index 1: a tool block's
    fragments went to whatever block the conversion landed on."""
    frames = anthropic_stream(tool_uses=[("toolu_1", "get_weather", ['{"city": "Paris"}'])])
    at = next(i for i, f in enumerate(frames) if f.startswith(f"event: {event}\n".encode()))
    assert b'"index": 0' in frames[at]
    frames[at] = frames[at].replace(b'"index": 0', b'"index": ' + index.encode())
    upstream.enqueue(sse_reply(*frames))
    adapter = make_adapter("anthropic", upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError, match=r"a content block's index is not a whole number"):
        await drain(adapter.stream("c", ASK_WEATHER, timeout=5))


async def test_an_anthropic_block_without_an_index_is_the_first(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    frames = [
        f.replace(b', "index": 0', b"").replace(b'"index": 0, ', b"")
        for f in anthropic_stream(tool_uses=[("toolu_1", "get_weather", ['{"city": "Paris"}'])])
    ]
    assert not any(b'"index"' in f for f in frames)
    upstream.enqueue(sse_reply(*frames))
    adapter = make_adapter("anthropic", upstream.base_url, client)
    folded = assemble(await drain(adapter.stream("c", ASK_WEATHER, timeout=5)))
    assert list(folded.tool_calls.values()) == [
        {"id": "toolu_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]


def unary_calls(family: str, n: int) -> dict[str, object]:
    """A unary answer of ``n`` tool calls in ``family``'s wire format."""
    if family == "anthropic":
        return canned.anthropic_message(
            None, tool_uses=[(f"t{i}", "f", {}) for i in range(n)], stop_reason="tool_use"
        )
    if family == "gemini":
        return canned.gemini_response(None, calls=[("f", {})] * n)
    if family == "ollama":
        return canned.ollama_response("", calls=[("f", {})] * n)
    return canned.openai_completion(
        None, tool_calls=[(f"c{i}", "f", "{}") for i in range(n)], finish_reason="tool_calls"
    )


@pytest.mark.parametrize("wire", WIRES, ids=[w.type_name for w in WIRES])
async def test_a_unary_answer_of_more_tool_calls_than_a_request_may_carry_back_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, wire: Wire
) -> None:
    """A stream was refused past 8192 calls; a unary answer was bounded only by its 32 MiB body
    (~500,000 empty calls, each made an object and passed on to the caller and the evidence)."""
    family = wire.type_name if wire.type_name in ("anthropic", "gemini", "ollama") else "openai"
    adapter = make_adapter(wire.type_name, upstream.base_url + wire.path, client, settings=wire.settings)
    upstream.enqueue(json_reply(unary_calls(family, 8192)), json_reply(unary_calls(family, 8193)))
    answer = await adapter.complete("m", ASK_WEATHER, timeout=10)
    assert len(answer.message.tool_calls) == 8192
    with pytest.raises(UpstreamProtocolError, match=r"more than 8192 tool calls in one answer"):
        await adapter.complete("m", ASK_WEATHER, timeout=10)
