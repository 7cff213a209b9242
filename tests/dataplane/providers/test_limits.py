"""Upstream answers are bounded: a body, a stream line or an SSE event past its limit is an
``UpstreamProtocolError``, found before the node holds it whole; errors stay classified."""

from __future__ import annotations

import pytest

from dataplane.chat import StreamChunk, ToolCallDelta
from dataplane.errors import UpstreamModelNotFound, UpstreamProtocolError
from dataplane.providers.transport import (
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    BodyTooLarge,
    answer_chars,
    bounded_lines,
)
from dataplane.upstream import UpstreamClient

from .canned import anthropic_stream, openai_chunk, openai_completion
from .fakes import HANG, FakeUpstream, Reply, json_reply, ndjson_reply, sse_event, sse_reply
from .samples import ASK_WEATHER, HELLO
from .streams import drain, make_adapter

MIB = 1024 * 1024


def openai(upstream: FakeUpstream, client: UpstreamClient):  # type: ignore[no-untyped-def]
    return make_adapter("openai", upstream.base_url + "/v1", client)


async def test_an_answer_declared_larger_than_the_limit_is_refused(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(Reply(body=(b" " * (MAX_BODY_BYTES + 1),)))  # sent with its Content-Length
    with pytest.raises(UpstreamProtocolError) as caught:
        await openai(upstream, client).complete("gpt-x", HELLO, timeout=10)
    assert str(caught.value) == (
        f"openai: upstream sent malformed output (answer of {MAX_BODY_BYTES + 1} bytes "
        f"exceeds the {MAX_BODY_BYTES}-byte limit)"
    )


async def test_an_undeclared_answer_is_cut_off_at_the_limit(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    # Chunked, no Content-Length: 1 MiB pieces until past the limit, then the upstream would hang.
    piece = b" " * MIB
    upstream.enqueue(Reply(body=(piece,) * (MAX_BODY_BYTES // MIB + 1) + (HANG,)))
    with pytest.raises(UpstreamProtocolError, match=f"exceeds the {MAX_BODY_BYTES}-byte limit"):
        await openai(upstream, client).complete("gpt-x", HELLO, timeout=10)


async def test_an_answer_at_the_limit_is_read(upstream: FakeUpstream, client: UpstreamClient) -> None:
    body = json_reply(openai_completion("Hello!")).body[0]
    upstream.enqueue(Reply(body=(body + b" " * (MAX_BODY_BYTES - len(body)),)))
    response = await openai(upstream, client).complete("gpt-x", HELLO, timeout=10)
    assert response.message.text == "Hello!"


async def test_a_huge_error_answer_is_still_classified_from_its_status(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.enqueue(Reply(status=404, body=(b"x" * MIB,) * 8 + (HANG,)))
    with pytest.raises(UpstreamModelNotFound) as caught:
        await openai(upstream, client).complete("gpt-x", HELLO, timeout=10)
    assert caught.value.body is not None
    assert len(caught.value.body) < 600


async def test_a_stream_line_without_end_is_refused(upstream: FakeUpstream, client: UpstreamClient) -> None:
    piece = b"x" * (256 * 1024)
    upstream.enqueue(sse_reply(b"data: ", *(piece,) * (MAX_EVENT_BYTES // len(piece) + 1), HANG))
    with pytest.raises(
        UpstreamProtocolError, match=f"a stream line exceeds the {MAX_EVENT_BYTES}-byte limit"
    ):
        await drain(openai(upstream, client).stream("gpt-x", HELLO, timeout=10))


async def test_an_sse_event_of_many_lines_is_refused(upstream: FakeUpstream, client: UpstreamClient) -> None:
    line = b"data: " + b"x" * 1024 + b"\n"  # never a blank line: one event that keeps growing
    upstream.enqueue(sse_reply(*(line * 64,) * (MAX_EVENT_BYTES // (64 * 1024) + 1), HANG))
    with pytest.raises(
        UpstreamProtocolError, match=f"a stream event exceeds the {MAX_EVENT_BYTES}-byte limit"
    ):
        await drain(openai(upstream, client).stream("gpt-x", HELLO, timeout=10))


async def test_an_ndjson_line_without_end_is_refused(upstream: FakeUpstream, client: UpstreamClient) -> None:
    adapter = make_adapter("ollama", upstream.base_url, client)
    piece = b"x" * (256 * 1024)
    upstream.enqueue(ndjson_reply(b'{"message": "', *(piece,) * (MAX_EVENT_BYTES // len(piece) + 1), HANG))
    with pytest.raises(UpstreamProtocolError, match="a stream line exceeds"):
        await drain(adapter.stream("llama", HELLO, timeout=10))


async def test_events_below_the_limit_pass(upstream: FakeUpstream, client: UpstreamClient) -> None:
    big = "y" * (MAX_EVENT_BYTES - 4096)
    frames = [
        sse_event(openai_chunk({"content": big})),
        sse_event(openai_chunk({}, "stop")),
        sse_event("[DONE]"),
    ]
    upstream.enqueue(sse_reply(*frames))
    chunks = await drain(openai(upstream, client).stream("gpt-x", HELLO, timeout=10))
    assert "".join(c.text for c in chunks) == big


async def test_a_streamed_answer_is_cut_off_at_the_limit(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """Each event within its bound, the answer without one: an upstream streaming text without
    end grew what the node holds of the answer (assembled for its digest and checks) until the
    stream's deadline, where a unary answer stops at ``MAX_BODY_BYTES``."""
    big = sse_event(openai_chunk({"content": "z" * (MAX_EVENT_BYTES - 4096)}))
    upstream.enqueue(sse_reply(*(big,) * (MAX_BODY_BYTES // (MAX_EVENT_BYTES - 4096) + 1), HANG))
    received: list[StreamChunk] = []
    with pytest.raises(
        UpstreamProtocolError, match=f"a streamed answer exceeds the {MAX_BODY_BYTES}-character limit"
    ):
        await drain(openai(upstream, client).stream("gpt-x", HELLO, timeout=10), into=received)
    assert 0 < sum(len(c.text) for c in received) <= MAX_BODY_BYTES


FRAGMENTS = 60_000
PIECE = "0123456789abcdef" * 24


@pytest.mark.parametrize("type_name", ["openai", "anthropic"])
async def test_tool_call_arguments_in_many_fragments_are_decoded_in_linear_time(
    upstream: FakeUpstream, client: UpstreamClient, type_name: str
) -> None:
    """The decoders added each fragment to a string holding all before it, copying it whole
    each time: 23 MB of arguments (within the answer's bound) in 60,000 fragments copied
    hundreds of gigabytes, minutes of the node's one event loop for one stream."""
    fragments = ['{"text": "', *(PIECE,) * FRAGMENTS, '"}']
    if type_name == "openai":
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
        frames = [
            sse_event(openai_chunk({"tool_calls": [call]})),
            *(
                sse_event(openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}))
                for f in fragments
            ),
            sse_event(openai_chunk({}, "tool_calls")),
            sse_event("[DONE]"),
        ]
    else:
        frames = anthropic_stream(tool_uses=[("toolu_1", "f", fragments)], stop_reason="tool_use")
    upstream.enqueue(sse_reply(b"".join(frames)))
    adapter = make_adapter(type_name, upstream.base_url, client)
    chunks = await drain(adapter.stream("m", ASK_WEATHER, timeout=60), timeout=20)
    arguments = "".join(d.arguments_fragment for c in chunks for d in c.tool_calls)
    assert arguments == '{"text": "' + PIECE * FRAGMENTS + '"}'


def test_a_streamed_answer_counts_its_tool_calls_whole() -> None:
    """Calls with no name or arguments counted nothing, so an upstream could stream an endless
    number of them (each held by the node) past the bound."""
    call = ToolCallDelta(index=0, id="call_1", name="get_weather", arguments_fragment='{"city"')
    assert answer_chars(StreamChunk(text="Hi", tool_calls=(call, ToolCallDelta(index=1, id="c2")))) == 28


async def _lines(*pieces: str, limit: int = 100) -> list[str]:
    async def source():  # type: ignore[no-untyped-def]
        for piece in pieces:
            yield piece

    return [line async for lines in bounded_lines(source(), limit) for line in lines]


async def test_bounded_lines_split_on_every_line_ending_across_pieces() -> None:
    assert await _lines("a\r", "\nb\rc\n", "\n", "d") == ["a", "b", "c", "", "d"]
    assert await _lines("a\r\n\r\n") == ["a", ""]
    assert await _lines("a\r", "b") == ["a", "b"]
    assert await _lines("") == []


async def test_bounded_lines_refuse_a_long_line_in_pieces_or_whole() -> None:
    with pytest.raises(BodyTooLarge):
        await _lines(*("x" * 30 for _ in range(4)), limit=100)
    with pytest.raises(BodyTooLarge):
        await _lines("x" * 101 + "\n", limit=100)
    assert await _lines("x" * 100 + "\n", limit=100) == ["x" * 100]


async def test_bounded_lines_come_a_piece_at_a_time_and_those_before_a_long_one_first() -> None:
    async def source():  # type: ignore[no-untyped-def]
        yield "a\nb\nc"
        yield "d\n\n"
        yield "e\n" + "x" * 101 + "\nf\n"

    got: list[list[str]] = []

    async def read() -> None:
        async for lines in bounded_lines(source(), 100):
            got.append(lines)

    with pytest.raises(BodyTooLarge):
        await read()
    assert got == [["a", "b"], ["cd", ""], ["e"]]
