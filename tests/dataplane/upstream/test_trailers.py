"""Trailer fields of a chunked answer are not headers: an upstream cannot change, after the body,
what the head said (its charset, its length, its coding)."""

from __future__ import annotations

import json

from dataplane.upstream import UpstreamClient
from tests.dataplane.providers import canned
from tests.dataplane.providers.samples import HELLO
from tests.dataplane.providers.streams import make_adapter

from .rawserver import JSON, Peer, RawServer


def _with_trailer(body: bytes, trailer: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"%x\r\n%s\r\n0\r\n%s\r\n\r\n" % (len(body), body, trailer)


async def test_a_trailer_does_not_become_a_header(client: UpstreamClient) -> None:
    """RFC 9110 6.5.1: a recipient must not merge a trailer field into the header section."""
    answer = json.dumps(canned.openai_completion("café")).encode()
    trailed = _with_trailer(answer, b"Content-Type: application/json; charset=latin-1\r\nX-Late: 1")

    async def handler(server: RawServer, peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(trailed)

    async with RawServer(handler) as server:
        response = await client.request("POST", server.url, headers=JSON, body=b"{}", timeout=5)
        assert await response.read(1 << 20) == (answer, False)
        assert response.headers == {"content-type": "application/json", "transfer-encoding": "chunked"}
        response.close()
        # Read as the head said (UTF-8), not as the trailer would have it (latin-1: "cafÃ©").
        adapter = make_adapter("openai", server.url, client)
        assert (await adapter.complete("m", HELLO, timeout=5)).message.text == "café"
