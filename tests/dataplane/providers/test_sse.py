"""The SSE line decoder, on the framing corners providers actually produce."""

from __future__ import annotations

from dataplane.chat import FinishReason
from dataplane.providers.sse import SSEDecoder, SSEEvent
from dataplane.upstream import UpstreamClient

from .canned import gemini_stream
from .fakes import FakeUpstream, sse_reply
from .samples import HELLO
from .streams import assemble, drain, make_adapter


def decode(*lines: str) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    last = decoder.flush()
    return [*events, last] if last is not None else events


def test_data_lines_join_with_newlines_and_blank_lines_dispatch() -> None:
    assert decode("data: a", "data: b", "", "data:c", "") == [SSEEvent("a\nb"), SSEEvent("c")]


def test_event_names_ids_comments_and_unknown_fields() -> None:
    lines = (": keep-alive", "event: ping", "id: 7", "retry: 100", "data: {}", "")
    assert decode(*lines) == [SSEEvent("{}", event="ping", id="7")]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert decode("data:  two spaces", "") == [SSEEvent(" two spaces")]


def test_a_final_event_without_its_blank_line_is_kept() -> None:
    assert decode("data: last") == [SSEEvent("last")]


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert decode("", "", ": comment", "") == []


async def test_crlf_framed_stream(upstream: FakeUpstream, client: UpstreamClient) -> None:
    # Gemini frames its SSE with \r\n.
    frames = [f.replace(b"\n", b"\r\n") for f in gemini_stream("Hel", "lo!")]
    upstream.enqueue(sse_reply(*frames))
    adapter = make_adapter("gemini", upstream.base_url + "/v1beta", client)
    folded = assemble(await drain(adapter.stream("g", HELLO, timeout=5)))
    assert folded.text == "Hello!"
    assert folded.finish_reason is FinishReason.STOP


async def test_a_byte_order_mark_opening_the_stream_is_not_part_of_its_first_line(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """An event stream is decoded as UTF-8 with a leading BOM dropped (WHATWG). Kept, it made the
    first line's field name "\ufeffdata", an unknown field, so the first event was dropped in
    silence: Gemini's answer lost its first piece of text ("lo!" served for "Hello!"), an OpenAI
    tool call its name and id."""
    frames = gemini_stream("Hel", "lo!")
    upstream.enqueue(sse_reply(b"\xef\xbb", b"\xbf" + frames[0], *frames[1:]))  # split between reads
    adapter = make_adapter("gemini", upstream.base_url + "/v1beta", client)
    folded = assemble(await drain(adapter.stream("g", HELLO, timeout=5)))
    assert folded.text == "Hello!"
    upstream.enqueue(sse_reply(b"\xef\xbb\xbf", *gemini_stream("Hel", "lo!")))
    assert assemble(await drain(adapter.stream("g", HELLO, timeout=5))).text == "Hello!"
