"""A streamed answer's writes: what a handler writes before the event loop comes round
leaves in one send(), the first token at once, and nothing held is lost or reordered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dataplane.http.messages import Limits, Request, Response
from dataplane.http.openai_api import server_error_body
from dataplane.http.protocol import CORK_BYTES, HttpConnection
from dataplane.http.server import HttpServer

LIMITS = Limits(header_timeout=5, body_timeout=5, keepalive_timeout=5)
Handler = Callable[[Request, Response], Awaitable[None]]


class Sends:
    """The bytes of each ``transport.write`` of the server's one connection."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def spy(self, server: HttpServer) -> None:
        (connection,) = server.connections
        assert isinstance(connection, HttpConnection)
        transport = connection._transport
        assert transport is not None
        write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            self.writes.append(bytes(data))
            write(data)

        transport.write = counted  # type: ignore[method-assign]


@pytest.fixture
async def serving() -> AsyncIterator[Callable[[Handler], Awaitable[HttpServer]]]:
    servers: list[HttpServer] = []

    async def start(handler: Handler) -> HttpServer:
        server = HttpServer(handler, server_error_body, LIMITS)
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close(1)


async def _exchange(server: HttpServer, version: bytes = b"HTTP/1.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /s %b\r\nHost: x\r\nConnection: close\r\n\r\n" % version)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def test_a_burst_leaves_in_one_send_after_the_first_token_which_leaves_at_once(
    serving: Callable[[Handler], Awaitable[HttpServer]],
) -> None:
    sends = Sends()
    holder: list[HttpServer] = []

    async def handler(request: Request, response: Response) -> None:
        sends.spy(holder[0])
        await response.start(200, ((b"content-type", b"text/event-stream"),))
        await response.write(b"role")
        await response.write(b"token-1", now=True)
        for i in range(2, 32):  # what one upstream read delivered: no await that yields
            await response.write(b"token-%d" % i)
        await asyncio.sleep(0.05)  # the upstream's next read
        await response.write(b"token-32")
        await response.end()

    holder.append(await serving(handler))
    answer = await _exchange(holder[0])

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in head
    tokens = [b"token-%d" % i for i in range(1, 33)]
    assert body == chunk(b"role") + b"".join(chunk(t) for t in tokens) + b"0\r\n\r\n"
    assert len(sends.writes) == 3, sends.writes
    first, burst, last = sends.writes
    assert first == head + b"\r\n\r\n" + chunk(b"role") + chunk(b"token-1")
    assert burst == b"".join(chunk(t) for t in tokens[1:31])
    assert last == chunk(b"token-32") + b"0\r\n\r\n"


async def test_a_burst_past_the_bound_is_sent_as_it_grows(
    serving: Callable[[Handler], Awaitable[HttpServer]],
) -> None:
    sends = Sends()
    holder: list[HttpServer] = []
    piece = b"x" * 1000
    count = 3 * CORK_BYTES // len(piece)

    async def handler(request: Request, response: Response) -> None:
        sends.spy(holder[0])
        await response.start(200, ())
        for _ in range(count):
            await response.write(piece)
        await response.end()

    holder.append(await serving(handler))
    answer = await _exchange(holder[0])

    assert answer.partition(b"\r\n\r\n")[2] == chunk(piece) * count + b"0\r\n\r\n"
    assert 3 <= len(sends.writes) <= 5
    assert max(map(len, sends.writes)) <= CORK_BYTES + len(chunk(piece))


async def test_an_http_1_0_stream_ended_by_closing_sends_everything_held_first(
    serving: Callable[[Handler], Awaitable[HttpServer]],
) -> None:
    async def handler(request: Request, response: Response) -> None:
        await response.start(200, ((b"content-type", b"text/plain"),))
        for i in range(10):
            await response.write(b"part-%d;" % i)
        await response.end()  # no chunked framing to end: the connection's close ends it

    server = await serving(handler)
    answer = await _exchange(server, b"HTTP/1.0")

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding" not in head
    assert body == b"".join(b"part-%d;" % i for i in range(10))
