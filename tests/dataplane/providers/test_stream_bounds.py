"""What a streamed answer can make a decoder hold is bounded by the answer the caller gets: a
provider's tool-call indexes and usage objects are read as the few values they are, not kept
as they came."""

from __future__ import annotations

import pytest

from dataplane.chat import StreamChunk
from dataplane.errors import UpstreamProtocolError
from dataplane.upstream import UpstreamClient

from .canned import openai_chunk
from .fakes import FakeUpstream, sse_event, sse_reply
from .samples import ASK_WEATHER
from .streams import drain, make_adapter

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
