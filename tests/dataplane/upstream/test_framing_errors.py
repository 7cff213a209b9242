"""Answers whose framing is ambiguous are refused, and the refusal says which rule they broke.

Two lengths (Content-Length with Transfer-Encoding, Content-Length twice, or a list of them)
are how a response is smuggled past one reader and not another: each is a protocol error,
never a guess. The parser's reason is one of its fixed phrases, never the upstream's bytes."""

from __future__ import annotations

import logging

import pytest

from dataplane.errors import UpstreamProtocolError
from dataplane.upstream import UpstreamClient
from dataplane.upstream import errors as upstream_errors
from tests.dataplane.providers.samples import HELLO
from tests.dataplane.providers.streams import CREDENTIAL, make_adapter

from .rawserver import Peer, RawServer, post

OK = b'{"ok":true}'


@pytest.mark.parametrize(
    ("head", "body", "reason"),
    [
        (
            b"Content-Length: 11\r\nTransfer-Encoding: chunked",
            b"b\r\n" + OK + b"\r\n0\r\n\r\n",
            "Transfer-Encoding can't be present with Content-Length",
        ),
        (
            b"Transfer-Encoding: chunked\r\nContent-Length: 11",
            b"b\r\n" + OK + b"\r\n0\r\n\r\n",
            "Content-Length can't be present with Transfer-Encoding",
        ),
        (b"Content-Length: 11\r\nContent-Length: 12", OK, "Duplicate Content-Length"),
        (b"Content-Length: 11\r\nContent-Length: 11", OK, "Duplicate Content-Length"),
        (b"Content-Length: 11, 11", OK, "Invalid character in Content-Length"),
        (b"Content-Length: -1", OK, "Invalid character in Content-Length"),
        (b"Content-Length: 99999999999999999999999", OK, "Content-Length overflow"),
        (b"Transfer-Encoding: chunked", b"ffffffffffffffffffff\r\n" + OK, "Chunk size overflow"),
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "two-lengths",
        "same-length-twice",
        "length-list",
        "negative",
        "huge",
        "chunk",
    ],
)
async def test_an_ambiguous_length_is_a_protocol_error_naming_the_rule(
    client: UpstreamClient, head: bytes, body: bytes, reason: str
) -> None:
    async def handler(server: RawServer, peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + head + b"\r\n\r\n" + body
            )

    async with RawServer(handler) as server:
        with pytest.raises(upstream_errors.RemoteProtocolError) as info:
            await post(client, server.url)
    assert str(info.value) == f"upstream sent a malformed HTTP response ({reason})"


@pytest.mark.parametrize(
    ("head", "logged"),
    [
        (
            b"Content-Length: 11\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding can't be present with Content-Length",
        ),
        (
            b"Transfer-Encoding: " + CREDENTIAL.encode() + b", chunked",
            "upstream sent transfer coding '[REDACTED]', which the node does not decode",
        ),
    ],
    ids=["two-lengths", "coding-echoing-the-credential"],
)
async def test_the_operator_is_told_which_rule_the_answer_broke_and_the_caller_only_ours(
    client: UpstreamClient, caplog: pytest.LogCaptureFixture, head: bytes, logged: str
) -> None:
    """The reason was in the chained exception only: the log said nothing, and the caller was
    told the upstream had closed the connection mid-response, which it had not."""

    async def handler(server: RawServer, peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\nb\r\n" + OK + b"\r\n0\r\n\r\n")

    async with RawServer(handler) as server:
        adapter = make_adapter("openai", server.url, client)
        with (
            caplog.at_level(logging.WARNING, logger="signalbox"),
            pytest.raises(UpstreamProtocolError) as info,
        ):
            await adapter.complete("m", HELLO, timeout=5)
    assert (
        str(info.value) == "openai: upstream sent a malformed or incomplete HTTP answer (RemoteProtocolError)"
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any(logged in m for m in messages), messages
    assert not any(CREDENTIAL in m for m in messages)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Type: text/html\r\n",
            "more than one content-type field",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-type: application/json\r\n",
            "more than one content-type field",
        ),
        (b"HTTP/2.0 200 OK\r\nContent-Type: application/json\r\n", "HTTP/2.0, not HTTP/1.1"),
        (
            b"HTTP/2.0 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
            "HTTP/2.0, not HTTP/1.1",
        ),
    ],
    ids=["two-media-types", "same-type-twice", "http-2-status-line", "http-2-interim"],
)
async def test_a_repeated_singleton_field_or_another_http_version_is_a_protocol_error(
    client: UpstreamClient, answer: bytes, reason: str
) -> None:
    # Two Content-Type fields were joined ("application/json, text/html"), a media type
    # neither of them is; a status line of HTTP/2.0 on this HTTP/1.1 connection was read as
    # an HTTP/1.1 answer. A singleton field must not be repeated (RFC 9110 5.3, 8.3): which
    # one the upstream meant is not guessed.
    async def handler(server: RawServer, peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer + b"Content-Length: 11\r\n\r\n" + OK)

    async with RawServer(handler) as server:
        with pytest.raises(upstream_errors.RemoteProtocolError) as info:
            await post(client, server.url)
    assert str(info.value) == f"upstream sent a malformed HTTP response ({reason})"


async def test_a_repeated_list_field_is_still_joined(client: UpstreamClient) -> None:
    async def handler(server: RawServer, peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nVary: a\r\nVary: b\r\n"
                            b"Content-Length: 11\r\n\r\n" + OK)  # fmt: skip

    async with RawServer(handler) as server:
        response = await client.request("POST", server.url, body=b"{}", timeout=5)
        try:
            assert response.headers["vary"] == "a, b"
            assert (await response.read(100))[0] == OK
        finally:
            response.close()
