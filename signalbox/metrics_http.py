"""The ``/metrics`` exposition both planes serve (``--metrics-listen``), and the control
plane's endpoint, on aiohttp (a node serves it on its own HTTP server:
``dataplane.metrics_server``).

Prometheus text or OpenMetrics (with exemplars), negotiated by the scraper's ``Accept`` as
Prometheus itself asks. Families of one name from several collectors (a node's workers) are
written once with their samples together: a format allows one TYPE line per family. A
``before`` hook runs on the event loop before each scrape is rendered, so gauges that need
I/O (the control plane's fleet, read from its database) are fresh and never read from the
exposition's thread.

aiohttp is imported when an endpoint starts, not with this module: metrics are opt-in, and
importing aiohttp costs ~0.2 s of CPU on every start of a node or control plane without them.

The endpoint holds at most ``MAX_CONNECTIONS`` connections, ``MAX_PER_PEER`` of them from one
address (one more is closed as it is made), and closes one that has had no request for
``IDLE_TIMEOUT_S``: aiohttp's defaults held any number of connections that never sent a byte,
for an hour, so a flood of them on the metrics port took the descriptors the control plane's
ports and database pool need (``controlplane.connections.OTHER_FILES`` counts the endpoint
among the few files besides the ports). A scraper uses one connection and reconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as prometheus_text
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics

if TYPE_CHECKING:
    from aiohttp import web

OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST
MAX_CONNECTIONS: Final = 64
MAX_PER_PEER: Final = 8
IDLE_TIMEOUT_S: Final = 15.0


class MetricsEndpoint:
    """Serves ``registry`` at ``GET /metrics`` on a TCP address (the control plane's)."""

    def __init__(
        self, registry: CollectorRegistry, before: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.registry = registry
        self._before = before
        self._runner: web.AppRunner | None = None
        self._gate: asyncio.Server | None = None
        self.connections: dict[str, int] = {}
        """Open connections by client address."""
        self._lock = asyncio.Lock()
        self.port = 0

    async def start(self, *, listen: str) -> None:
        """``listen``: HOST:PORT (port 0 picks one: ``port``)."""
        from aiohttp import web

        app = web.Application(client_max_size=1024)
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_TIMEOUT_S
        )
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None
        host, _, port = listen.rpartition(":")
        self._gate = await asyncio.get_running_loop().create_server(
            lambda: _Gate(self.connections, handlers), host.strip("[]") or "127.0.0.1", int(port)
        )
        self.port = int(self._gate.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._gate is not None:
            self._gate.close()
            self._gate = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _scrape(self, request: web.Request) -> web.Response:
        # One scrape at a time: the hook's results belong to the scrape that asked for them.
        async with self._lock:
            if self._before is not None:
                await self._before()
            return render(self.registry, request.headers.get("Accept", ""))


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The scrape's body and content type, in the format the ``Accept`` header asks for."""
    merged = _Merged(registry)
    if "application/openmetrics-text" in accept:
        return openmetrics.generate_latest(merged), OPENMETRICS  # type: ignore[no-untyped-call]
    return prometheus_text.generate_latest(merged), prometheus_text.CONTENT_TYPE_LATEST


def render(registry: CollectorRegistry, accept: str) -> web.Response:
    from aiohttp import web

    body, content_type = exposition(registry, accept)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


class _Merged:
    """``collect()`` of a registry with the families of one name joined into one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for family in self._registry.collect():
            known = merged.get(family.name)
            if known is None:
                merged[family.name] = family
            else:
                known.samples.extend(family.samples)
        yield from merged.values()


class _Gate(asyncio.Protocol):
    """One connection to the endpoint: closed as it is made when the endpoint holds
    ``MAX_CONNECTIONS``, or its address ``MAX_PER_PEER``; otherwise aiohttp's handler's."""

    def __init__(self, held: dict[str, int], handlers: Callable[[], asyncio.Protocol]) -> None:
        self._held = held
        self._handlers = handlers
        self._inner: asyncio.Protocol | None = None
        self._host: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._host = host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._held[host] = self._held.get(host, 0) + 1
        if sum(self._held.values()) > MAX_CONNECTIONS or self._held[host] > MAX_PER_PEER:
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
            return
        self._inner = self._handlers()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._host is not None:
            left = self._held[self._host] - 1
            if left:
                self._held[self._host] = left
            else:
                del self._held[self._host]
            self._host = None
        if self._inner is not None:
            self._inner.connection_lost(exc)
