"""A small HTTP/1.1 server for the node's public HTTP front door: asyncio + httptools.

Why not a framework: the front door is public-facing and on the hot path. A protocol
over ``httptools`` (the parser uvicorn uses) costs a fraction of a framework per request
and leaves every limit in our hands:

- **Sizes.** The request line and headers together at most ``max_header_bytes`` and
  ``max_headers`` fields (431 beyond), the body at most ``max_body_bytes`` (413; a
  ``Content-Length`` beyond it is refused before a byte of the body is read, as is a
  request waiting for ``100 Continue`` whose credentials the ``screen`` refuses).
- **Time.** The headers must arrive within ``header_timeout`` of the request's first byte
  (408), the body within ``body_timeout`` of the headers (408); an idle keep-alive
  connection is closed after ``keepalive_timeout``; a client that stops reading its answer
  is dropped after ``write_timeout``. A slow client cannot hold a connection, and the
  handler it feeds, forever.
- **Connections.** At most ``max_requests_per_connection`` requests on one connection;
  requests are answered in order (pipelining), one at a time; reading pauses when a few are
  waiting, so a client cannot queue unbounded work.
- **Versions.** HTTP/1.1 and HTTP/1.0; any other version is answered 505 and the
  connection closed.
- **Smuggling.** A request with both ``Content-Length`` and ``Transfer-Encoding``, with more
  than one ``Host``, or an upgrade, is refused (400) and the connection closed.
- **Codings.** A transfer coding other than chunked is refused (501), a content coding
  (``Content-Encoding: gzip``) too (415): no handler decodes one, and none is inflated here.
- **Disconnects.** A client that goes away cancels its handler at once, even while nothing
  is being written: the cancellation reaches the upstream call and the request's evidence
  records it. A client that half-closes after its requests (HTTP/1.1 allows it) gets its
  answers (``eof_received`` says how the two are told apart); an HTTP/1.0 one, which
  cannot be told apart, is taken as gone.
- **Drain.** ``close(grace)`` stops accepting, closes idle connections, lets requests in
  flight and those still arriving finish (their answers say ``Connection: close``) for up
  to ``grace`` seconds, then cancels what is left.

A handler gets a ``Request`` and answers through its ``Response``: ``send`` for a whole
answer, or ``start`` / ``write`` / ``end`` for a chunked one (server-sent events). Errors
the server itself answers (parse errors, limits, timeouts) are made by ``error_body``,
which the application supplies, so they share the application's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

from dataplane.http.messages import ErrorBody, Handler, Limits, Screen
from dataplane.http.protocol import HttpConnection
from dataplane.peer_places import PeerPlaces
from dataplane.tls_front import PeerLookup


class HttpServer:
    """Serves ``handler`` on ``host:port`` (``start``), until ``close``."""

    def __init__(
        self,
        handler: Handler,
        error_body: ErrorBody,
        limits: Limits = Limits(),
        ssl_context: ssl.SSLContext | None = None,
        peers: PeerLookup | None = None,
        screen: Screen | None = None,
    ) -> None:
        self.handler = handler
        self.screen = screen
        self.peers = peers
        """Behind a TLS front (``dataplane.tls_front``): what it established per connection."""
        self.error_body = error_body
        self.limits = limits
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self.connections: set[HttpConnection] = set()
        self.refused_connections = 0
        """Connections answered 503 for being over ``limits.max_connections`` or
        ``limits.per_peer``, since start."""
        self.peer_places = PeerPlaces()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self),
            host,
            port,
            ssl=self._ssl,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def start_unix(self, path: Path) -> None:
        """Serve on the unix socket ``path`` instead (a node's workers among themselves)."""
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: HttpConnection(self), str(path), backlog=64
        )

    @property
    def accepting(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def close(self, grace: float) -> None:
        """Stop accepting; let answers in flight finish for up to ``grace`` seconds."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                # Requests being answered, and requests still arriving: a request whose
                # body was on its way when the drain began was dropped without an answer.
                while self.in_flight or any(c.busy for c in self.connections):
                    self.idle.clear()
                    await self.idle.wait()
        for connection in list(self.connections):
            connection._abort()
        await self._server.wait_closed()
        self._server = None
