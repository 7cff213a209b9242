"""The node's front doors over one pipeline: the Infer API (gRPC) and the HTTP door.

Each listens on its address with the node's TLS settings. Where the node requires client
certificates (``--tls-client-ca``), a door listens in plaintext on a loopback port and a
``TlsFront`` takes its address, so that a certificate the client CA did not sign is refused
per request (UNAUTHENTICATED, 401) with an evidence record, not by a failed handshake
(``dataplane.tls_front`` says why). Health and reflection answer any TLS client there; the
Infer calls require the trusted certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from dataplane.api.service import InferService, add_to_server
from dataplane.connection_front import ConnectionFront
from dataplane.http.openai_api import OpenAIFrontDoor, server_error_body
from dataplane.http.server import HttpServer
from dataplane.node_settings import NodeSettings
from dataplane.open_files import GRPC_HANDSHAKE_TIMEOUT_MS, per_peer_cap
from dataplane.pipeline import Pipeline
from dataplane.tls_front import BACKEND_HOST, TlsFront
from signalbox.api.infer.v1 import infer_pb2
from signalbox.relay import Listener
from signalbox.tls import add_port, ssl_server_context

INFER_SERVICE = infer_pb2.DESCRIPTOR.services_by_name["InferService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _host(listen: str) -> tuple[str, int]:
    """``host:port`` -> (host without brackets, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Doors:
    """Starts and drains the node's doors; ``port`` and ``http_port`` are the bound ones."""

    def __init__(
        self,
        settings: NodeSettings,
        pipeline: Pipeline,
        health: HealthServicer,
        ready: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._s = settings
        self._pipeline = pipeline
        self._health = health
        self._ready = ready
        """None when the node serves; else why not (the HTTP door's ``/readyz``)."""
        self._server: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self.fronts: list[TlsFront] = []
        """The TLS fronts, where the node requires client certificates."""
        self.counting: ConnectionFront | None = None
        """The gRPC door's front that counts client addresses, where no TLS front does."""
        self.port = 0
        self.http_port = 0

    @property
    def http(self) -> HttpServer | None:
        """The HTTP door's server, once started (``--http-listen``)."""
        return self._http

    @property
    def http_accepting(self) -> bool:
        return self._http is not None and self._http.accepting

    def _front(
        self, listen: str, alpn: tuple[bytes, ...], door: str, max_clients: int, max_per_peer: int | None
    ) -> TlsFront | None:
        s = self._s
        s.tls.credentials(listen)  # the flags' checks, whichever way the door listens
        if s.tls.client_ca is None:
            return None
        front = TlsFront(
            s.tls, listen, alpn=alpn, door=door, max_clients=max_clients, max_per_peer=max_per_peer
        )
        self.fronts.append(front)
        return front

    async def start(self) -> None:
        s = self._s
        reuse = s.workers > 1
        server = grpc.aio.server(
            options=[
                # Two nodes must never silently share a port; a node's own workers do.
                ("grpc.so_reuseport", 1 if reuse else 0),
                ("grpc.max_receive_message_length", 32 * 1024 * 1024),
                ("grpc.max_send_message_length", 32 * 1024 * 1024),
                # One connection over the cap is closed at once (the caller sees UNAVAILABLE).
                ("grpc.max_allowed_incoming_connections", s.grpc_max_connections),
                # Neither a connection that never finishes its handshake, nor one that has
                # and then sends nothing, holds a place under that cap for good ...
                ("grpc.server_handshake_timeout_ms", GRPC_HANDSHAKE_TIMEOUT_MS),
                ("grpc.max_connection_idle_ms", _ms(s.grpc_idle_timeout)),
                ("grpc.max_connection_age_ms", _ms(s.grpc_max_age)),
                ("grpc.max_connection_age_grace_ms", _ms(s.grpc_age_grace)),
                # ... and one connection holds a bounded number of calls.
                ("grpc.max_concurrent_streams", s.grpc_max_streams),
            ]
        )
        per_peer = s.grpc_max_connections_per_peer
        front = self._front(
            s.listen,
            (b"h2",),
            "grpc",
            s.grpc_max_connections,
            None if per_peer is None else per_peer or s.grpc_max_connections,  # 0: not counted
        )
        counting = None
        if front is None and per_peer != 0:
            counting = ConnectionFront(
                "grpc",
                max_clients=s.grpc_max_connections,
                max_per_peer=per_peer_cap(s.grpc_max_connections) if per_peer is None else per_peer,
                flags=("--grpc-max-connections", "--grpc-max-connections-per-peer"),
            )
            self.counting = counting
        add_to_server(InferService(self._pipeline, None if front is None else front.peer), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        # The Infer API's schema is public: anyone who may call it may list it.
        reflection.enable_server_reflection((INFER_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        if front is not None:
            port = server.add_insecure_port(f"{BACKEND_HOST}:0")
        else:
            port = add_port(server, s.listen, s.tls, bind=None if counting is None else f"{BACKEND_HOST}:0")
        if port == 0:
            raise OSError(f"cannot listen on {s.listen}")
        await server.start()
        self._server = server
        if front is not None:
            self.port = await front.start(*_host(s.listen), port, reuse_port=reuse)
        elif counting is not None:
            self.port = await counting.start(*_host(s.listen), port, reuse_port=reuse)
        else:
            self.port = port
        if s.http_listen is None:
            return
        host, http_port = _host(s.http_listen)
        door = OpenAIFrontDoor(self._pipeline, self._ready)
        front = self._front(
            s.http_listen, (b"http/1.1",), "http", s.http_limits.max_connections, s.http_limits.per_peer
        )
        if front is None:
            self._http = HttpServer(
                door.handle,
                server_error_body,
                s.http_limits,
                ssl_server_context(s.http_listen, s.tls),
                screen=door.may_send_body,
            )
            await self._http.start(host or "0.0.0.0", http_port, reuse_port=reuse)
            self.http_port = self._http.port
        else:
            self._http = HttpServer(
                door.handle, server_error_body, s.http_limits, peers=front.peer, screen=door.may_send_body
            )
            await self._http.start(BACKEND_HOST, 0)
            self.http_port = await front.start(host, http_port, self._http.port, reuse_port=reuse)

    async def stop(self, grace: float) -> None:
        """Both doors stop accepting at once; running calls and streams get ``grace`` seconds."""
        fronts: list[Listener] = [*self.fronts, *([] if self.counting is None else [self.counting])]
        for front in fronts:
            front.stop_accepting()
        await asyncio.gather(
            *(() if self._server is None else (self._server.stop(grace),)),
            *(() if self._http is None else (self._http.close(grace),)),
        )
        # The doors closed their connections; the fronts cut what is left at once.
        await asyncio.gather(*(front.close() for front in fronts))
