"""A loopback HTTP/1.1 server scripted per test, byte by byte, so it can misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dataplane.upstream import UpstreamClient, encode_headers

JSON = encode_headers({"Content-Type": "application/json"})


@dataclass
class Request:
    head: bytes
    body: bytes

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.encode():
                return value.strip().decode()
        return None


@dataclass
class Peer:
    """One accepted connection, as the handler sees it."""

    number: int
    """1 for the first connection the server accepted, 2 for the next, ..."""
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    served: int = 0

    async def request(self) -> Request | None:
        """The next request on this connection; None when the client closed it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        request = Request(head, b"")
        length = int(request.header("content-length") or 0)
        request.body = await self.reader.readexactly(length)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_closed_by_client(self) -> None:
        """Returns when the client has closed the connection (EOF or reset)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass


Handler = Callable[["RawServer", Peer], Awaitable[None]]


async def post(client: UpstreamClient, url: str, *, timeout: float = 5.0, limit: int = 1 << 20) -> bytes:
    """POST a small JSON body through ``client`` and read the whole answer (at most ``limit`` bytes)."""
    response = await client.request("POST", url, headers=JSON, body=b'{"q":1}', timeout=timeout)
    try:
        data, more = await response.read(limit)
        assert not more
        return data
    finally:
        response.close()


def answer(body: bytes = b'{"ok":true}', *, status: str = "200 OK", headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


def openai_completion(
    model: str,
    *,
    completion_id: str = "chatcmpl-raw",
    text: str = "hi",
    prompt_tokens: int = 1,
    completion_tokens: int = 1,
    reasoning_tokens: int | None = None,
) -> bytes:
    """An OpenAI chat completion's JSON body, for a handler that plays a provider
    (``reasoning_tokens``: its ``completion_tokens_details``, which a reasoning model reports)."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return json.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
    ).encode()


async def keep_answering(server: RawServer, peer: Peer) -> None:
    """The well-behaved handler: every request gets ``answer()``, on one connection as long as it lasts."""
    while (request := await peer.request()) is not None:
        server.requests.append(request)
        await peer.send(answer())


@dataclass
class RawServer:
    handler: Handler = keep_answering
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    accepted: int = 0
    closed_by_client: int = 0
    """Connections on which the handler returned and the client had closed (EOF) before."""
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        peer = Peer(self.accepted, reader, writer)
        try:
            await self.handler(self, peer)
            if reader.at_eof():
                self.closed_by_client += 1
        except ConnectionError:
            self.closed_by_client += 1
        finally:
            self._writers.discard(writer)
            writer.close()
