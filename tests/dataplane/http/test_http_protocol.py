"""The HTTP server's protocol edges: which versions it speaks, and clients that half-close
or leave."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dataplane.http.messages import Limits, Request, Response
from dataplane.http.openai_api import server_error_body
from dataplane.http.server import HttpServer
from tests.fixtures.certs import TestCA
from tests.helpers import eventually

LIMITS = Limits(header_timeout=5, body_timeout=5, keepalive_timeout=5)


async def _echo(request: Request, response: Response) -> None:
    await response.send(
        200, ((b"content-type", b"text/plain"),), b"%s %s" % (request.method.encode(), request.body)
    )


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    server = HttpServer(_echo, server_error_body, LIMITS)
    await server.start("127.0.0.1", 0)
    yield server
    await server.close(1)


async def _exchange(server: HttpServer, data: bytes, *, half_close: bool = False) -> bytes:
    """Send ``data`` on a fresh connection (then shut the write side when ``half_close``);
    everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0", b"HTTP/1.2"])
async def test_a_version_other_than_1_0_or_1_1_is_answered_505_and_closed(
    server: HttpServer, version: bytes
) -> None:
    # HTTP/2.0 (which httptools parses) was answered as HTTP/1.1; HTTP/3.0 as malformed.
    answer = await _exchange(
        server, b"POST /x %b\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /x HTTP/1.1\r\n\r\n" % version
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer
    assert b"connection: close" in head
    error = json.loads(body)["error"]  # one answer: the pipelined request after it is not read
    assert "HTTP version not supported" in error["message"]
    assert error["type"] == "server_error"


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
async def test_http_1_0_and_1_1_are_served(server: HttpServer, version: bytes) -> None:
    answer = await _exchange(
        server, b"POST /x %b\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi" % version
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert answer.endswith(b"\r\n\r\nPOST hi")


class Gated:
    """A handler that answers once ``release`` is set, and says whether it was cancelled."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, request: Request, response: Response) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await _echo(request, response)


@pytest.fixture
async def gated() -> AsyncIterator[tuple[HttpServer, Gated]]:
    handler = Gated()
    server = HttpServer(handler, server_error_body, LIMITS)
    await server.start("127.0.0.1", 0)
    yield server, handler
    await server.close(1)


REQUEST = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"


async def test_a_client_that_half_closes_after_its_requests_gets_its_answers(
    gated: tuple[HttpServer, Gated],
) -> None:
    # The end of the client's sending was taken for the client gone: its handler was
    # cancelled and it got no answer (HTTP/1.1 lets a client shut its side and read on).
    server, handler = gated
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(REQUEST + REQUEST.replace(b"hi", b"yo"))
        writer.write_eof()
        await writer.drain()
        # Asked whether it is still there, as an HTTP/1.1 client must read past.
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 103 Early Hints\r\n\r\n"
        handler.release.set()
        answers = await asyncio.wait_for(reader.read(), 10)  # then the connection closes
    finally:
        writer.close()
    first, second = answers.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"connection: keep-alive" in first
    assert first.endswith(b"POST hi")
    assert b"connection: close" in second
    assert second.endswith(b"POST yo")
    assert not handler.cancelled.is_set()


async def test_a_client_that_closes_before_its_answer_still_cancels_its_handler(
    gated: tuple[HttpServer, Gated],
) -> None:
    server, handler = gated
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(REQUEST)
    await writer.drain()
    writer.close()  # the whole socket: the interim answer is met with a reset
    await eventually(handler.cancelled.is_set, message="the handler was cancelled")
    await eventually(lambda: not server.connections, message="the connection was closed")


@pytest.mark.parametrize("half", [True, False], ids=["half-closed", "closed"])
async def test_an_http_1_0_client_that_ends_its_side_before_its_answer_is_gone(
    gated: tuple[HttpServer, Gated], half: bool
) -> None:
    # An HTTP/1.0 client may not be sent an interim answer (RFC 9110 15.2), so the server
    # kept the connection open as for a half-closed client and never asked: one that left
    # was seen only when its answer was written. HTTP/1.0 knows no half-close: gone.
    server, handler = gated
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"))
    await writer.drain()
    await eventually(lambda: server.in_flight == 1, message="the request is being answered")
    if half:
        writer.write_eof()
    else:
        writer.close()
    await eventually(handler.cancelled.is_set, message="the handler was cancelled")
    await eventually(lambda: not server.connections, message="the connection was closed")
    if half:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # no interim answer, no answer
        writer.close()


async def test_a_tls_client_that_closes_before_its_answer_cancels_its_handler_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Over TLS the client's close_notify ends the session whatever the server says: keeping
    # the connection open for a half-closed client there only made asyncio log a warning
    # for each client that left while waiting.
    ca = TestCA(tmp_path / "ca")
    pem = ca.issue("localhost", server=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pem.cert, pem.key)
    handler = Gated()
    server = HttpServer(handler, server_error_body, LIMITS, server_tls)
    await server.start("127.0.0.1", 0)
    try:
        client_tls = ssl.create_default_context(cafile=ca.ca_file)
        _, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_tls, server_hostname="localhost"
        )
        writer.write(REQUEST)
        await writer.drain()
        await eventually(lambda: server.in_flight == 1, message="the request is being answered")
        writer.close()
        await eventually(handler.cancelled.is_set, message="the handler was cancelled")
    finally:
        await server.close(1)
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]
