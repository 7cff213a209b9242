"""Answers whose body is gzip- or deflate-coded for the hop (``Transfer-Encoding: gzip, chunked``),
from real loopback servers sending exactly those bytes: decoded, bounded, and refused precisely
when the coding is one the node does not decode."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from dataplane.errors import UpstreamProtocolError
from dataplane.upstream import UpstreamClient
from dataplane.upstream import errors as upstream_errors
from dataplane.upstream.codings import MAX_PIECE
from tests.dataplane.providers import canned
from tests.dataplane.providers.samples import HELLO
from tests.dataplane.providers.streams import assemble, drain, make_adapter

from .rawserver import JSON, Handler, Peer, RawServer, post

BODY = json.dumps({"ok": True, "text": "hello " * 1000}).encode()


def chunked(data: bytes, size: int = 1000) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def coded(
    body: bytes, coding: str = "gzip, chunked", content_type: str = "application/json", framed: bool = True
) -> bytes:
    """An answer whose body is ``body`` under the transfer codings ``coding`` names."""
    data = body
    names = [c.strip().lower() for c in coding.split(",")]
    for name in names[:-1] if framed else names:  # in the order applied; chunked last
        data = gzip.compress(data) if name in ("gzip", "x-gzip") else zlib.compress(data)
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: {coding}\r\n\r\n"
    return head.encode() + (chunked(data) if framed else data)


def answering(*answers: bytes, close: bool = False) -> Handler:
    async def handler(server: RawServer, peer: Peer) -> None:
        for data in answers:
            request = await peer.request()
            if request is None:
                return
            server.requests.append(request)
            await peer.send(data)
        if close:
            peer.writer.close()
        else:
            await peer.wait_closed_by_client()

    return handler


@pytest.mark.parametrize("coding", ["gzip, chunked", "x-gzip, chunked", "deflate, chunked", "GZIP , Chunked"])
async def test_a_coded_chunked_answer_is_decoded_and_its_connection_reused(
    client: UpstreamClient, coding: str
) -> None:
    """It was refused as malformed: the adapters got gzip bytes for JSON."""
    async with RawServer(answering(coded(BODY, coding), coded(BODY, coding))) as server:
        assert await post(client, server.url) == BODY
        assert await post(client, server.url) == BODY
    assert server.accepted == 1


async def test_a_coded_answer_without_chunks_ends_with_the_connection(client: UpstreamClient) -> None:
    async with RawServer(answering(coded(BODY, "gzip", framed=False), close=True)) as server:
        assert await post(client, server.url) == BODY


async def test_an_adapter_reads_a_coded_answer_plainly_and_streamed(client: UpstreamClient) -> None:
    answer = json.dumps(canned.openai_completion("Hello!")).encode()
    stream = b"".join(canned.openai_text_stream("Hel", "lo!"))
    handler = answering(coded(answer), coded(stream, content_type="text/event-stream"))
    async with RawServer(handler) as server:
        adapter = make_adapter("openai", server.url, client)
        assert (await adapter.complete("m", HELLO, timeout=5)).message.text == "Hello!"
        assert assemble(await drain(adapter.stream("m", HELLO, timeout=5))).text == "Hello!"


async def test_a_body_that_inflates_without_end_is_read_in_bounded_pieces_up_to_the_readers_limit(
    client: UpstreamClient,
) -> None:
    """64 MiB of zeros gzip to 64 KiB: the reader gets pieces of at most ``MAX_PIECE`` bytes and
    stops at its limit, having decoded not much more than that; the adapter refuses it as it
    refuses any answer past 32 MiB."""
    bomb = coded(b"\0" * (64 << 20))
    async with RawServer(answering(bomb, bomb)) as server:
        response = await client.request("POST", server.url, headers=JSON, body=b"{}", timeout=5)
        pieces = [len(await response.__anext__()) for _ in range(20)]
        assert max(pieces) <= MAX_PIECE
        assert await response.read(1 << 20) == (b"\0" * (1 << 20), True)
        response.close()
        adapter = make_adapter("openai", server.url, client)
        with pytest.raises(UpstreamProtocolError, match="exceeds the 33554432-byte limit"):
            await adapter.complete("m", HELLO, timeout=10)


@pytest.mark.parametrize(
    ("coding", "problem"),
    [
        ("br, chunked", "upstream sent transfer coding 'br', which the node does not decode"),
        ("compress, chunked", "upstream sent transfer coding 'compress', which the node does not decode"),
        ("gzip, gzip, chunked", "upstream sent 2 transfer codings; the node decodes one at most"),
        ("chunked, gzip", "upstream sent a Transfer-Encoding with chunked other than last"),
        ("chunked, chunked", "upstream sent a Transfer-Encoding with chunked other than last"),
    ],
)
async def test_a_coding_the_node_does_not_decode_is_a_protocol_error_naming_it(
    client: UpstreamClient, coding: str, problem: str
) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: {coding}\r\n\r\n"
    async with RawServer(answering(head.encode() + chunked(BODY))) as server:
        with pytest.raises(upstream_errors.RemoteProtocolError) as info:
            await post(client, server.url)
    assert str(info.value) == problem


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not gzip at all", "upstream sent a body that is not valid gzip"),
        (gzip.compress(BODY)[:-20], "upstream's gzip body ended before its end"),
        (gzip.compress(BODY) + b"trailing", "upstream sent bytes after the end of its gzip body"),
    ],
    ids=["corrupt", "truncated", "trailing"],
)
async def test_a_body_its_coding_does_not_describe_is_undecodable(
    client: UpstreamClient, data: bytes, problem: str
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    async with RawServer(answering(head + chunked(data))) as server:
        with pytest.raises(upstream_errors.DecodingError) as info:
            await post(client, server.url)
    assert str(info.value) == problem
