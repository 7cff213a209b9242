"""The loopback side of a front that relays a client's connection to a server behind it
(the node's TLS front, ``dataplane.tls_front``; the counting one, ``dataplane.connection_front``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol


class Client(Protocol):
    """The front's client side, told what the server side does."""

    def from_backend(self, data: bytes) -> None:
        """The server's bytes, for the client."""

    def backend_closed(self) -> None:
        """The server ended the connection."""

    def backend_paused(self, paused: bool) -> None:
        """The server reads slower than the client sends (or caught up)."""


class ClientSide(asyncio.Protocol):
    """A front's client connection, once relayed to ``_backend``: a client that reads
    slower than the server answers stops the server's side being read."""

    _backend: asyncio.Transport | None = None

    def pause_writing(self) -> None:
        if self._backend is not None:
            self._backend.pause_reading()

    def resume_writing(self) -> None:
        if self._backend is not None:
            self._backend.resume_reading()


class Backend(asyncio.Protocol):
    """A front's loopback connection to the server behind it, for one client."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client.from_backend(data)

    def eof_received(self) -> bool:
        return False  # close

    def pause_writing(self) -> None:
        self._client.backend_paused(True)

    def resume_writing(self) -> None:
        self._client.backend_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.backend_closed()


class Listener:
    """A front's listening socket and its client connections (each with ``abort()``)."""

    def __init__(self) -> None:
        self.clients: set[Any] = set()
        self.idle = asyncio.Event()
        """Set when the last client connection is gone (its protocol sets it)."""
        self.port = 0
        self._server: asyncio.Server | None = None

    async def listen(
        self,
        host: str | None,
        port: int,
        factory: Callable[[], asyncio.Protocol],
        *,
        reuse_port: bool = False,
    ) -> int:
        """Accept on ``host:port`` (None: every interface); the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, host, port, reuse_port=reuse_port or None, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def gone(self, client: object) -> None:
        """``client``'s connection is closed."""
        self.clients.discard(client)
        if not self.clients:
            self.idle.set()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting; connections still open after ``grace`` seconds are cut."""
        self.stop_accepting()
        if self.clients:
            self.idle.clear()
            try:
                async with asyncio.timeout(grace):  # not wait_for: it can lose a cancel on 3.11
                    await self.idle.wait()
            except TimeoutError:
                for client in list(self.clients):
                    client.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
