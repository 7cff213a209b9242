"""A listener in front of a gRPC server that caps one client address's connections: the
control plane's two ports (``controlplane.app``), and the node's gRPC door when it has no TLS
front already counting them (``dataplane.doors``, no ``--tls-client-ca``).

A gRPC port caps its connections, but gRPC's server counts only their total and lets Python
neither see nor refuse one: one address that opened the cap's connections (and said
nothing, or reconnected in a loop) held every place until its handshake or idle timeout,
and every node, admin or caller elsewhere was refused meanwhile. The control plane's node
port is open to anyone before any certificate is checked; a node's gRPC door before any
API key is.

So the gRPC server listens on an ephemeral loopback port, and this front takes the public
address: per accepted connection it counts the client's address (``PeerPlaces``, as the
node's HTTP door does), cuts one over ``max_per_peer`` (or over ``max_clients`` in all) at
once, before any byte, and otherwise opens one loopback connection to the server and copies
bytes both ways untouched (TLS, client certificates and all stay between the client and
gRPC), in the transports' callbacks with back-pressure: a side whose peer's write buffer is
full stops reading. The server's own limits still apply to what it sees (its idle timeout
and maximum age close the loopback connection, and so the client's).

gRPC then sees every client as ``127.0.0.1`` and the front's port: ``peer_of`` gives the
client's own address back (for audit rows, per-address limits of refused calls, logs), from
the loopback connection's local port, filed before its first byte.

Costs: each byte is copied once more through Python (``bench/README.md`` measures it on
evidence ingest and on the Infer API), and a connection holds three descriptors instead of
one (``FDS_PER_CONNECTION``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import grpc

from dataplane.errors import shown
from dataplane.peer_places import PeerPlaces
from signalbox.relay import Backend, ClientSide, Listener

log = logging.getLogger(__name__)

BACKEND_HOST: Final = "127.0.0.1"
FDS_PER_CONNECTION: Final = 3
"""A fronted connection's descriptors: the client's socket and the loopback one at the
front, and the loopback one at the gRPC server (both in this process)."""
OVER_LIMIT: Final = "over_limit"
OVER_PEER_LIMIT: Final = "over_peer_limit"
WARN_EVERY_S: Final = 60.0
"""A front logs its refusals at most once a minute (with how many since its last line): a
flood must not flood the log too."""

_peers: dict[int, str] = {}
"""Every front's clients by the local port of its loopback connection to the server, as
gRPC writes a peer (``ipv4:10.0.0.1:5555``). One map for the process: those ports are
unique to it, while their connections are open."""


def peer_of(context: grpc.aio.ServicerContext[object, object]) -> str:
    """The client of ``context``'s call: its own address when it came through a front, else
    gRPC's ``context.peer()``."""
    peer: str = context.peer()
    prefix = f"ipv4:{BACKEND_HOST}:"
    if peer.startswith(prefix):
        port = peer[len(prefix) :]
        if port.isdigit():
            return _peers.get(int(port), peer)
    return peer


def _grpc_peer(address: object) -> str | None:
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host, port = str(address[0]), address[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class ConnectionFront(Listener):
    """Listens on a public address for one gRPC port (``name``: admin, node, grpc; a metrics
    label and log lines' name) and forwards each connection within its caps to the server on
    ``BACKEND_HOST:backend_port``."""

    def __init__(
        self, name: str, *, max_clients: int, max_per_peer: int, flags: tuple[str, str] = ("", "")
    ) -> None:
        """``flags``: the settings of ``max_clients`` and ``max_per_peer``, named in the log."""
        super().__init__()
        self.name = name
        self.max_clients = max_clients
        self.max_per_peer = max_per_peer
        self.flags = flags
        self._warned_at = -WARN_EVERY_S
        self._unlogged = 0
        self.peer_places = PeerPlaces()
        self.refused = {OVER_LIMIT: 0, OVER_PEER_LIMIT: 0}
        """Connections cut at once, by why, since start."""
        self.on_refused: Callable[[str, str], None] | None = None
        """Told each cut connection's port name and why (the metrics' counter)."""
        self.backend_port = 0

    def warn(self, why: str, host: str | None) -> None:
        """Log a refusal: the first at once, then at most one line a ``WARN_EVERY_S``."""
        now = asyncio.get_running_loop().time()
        if now - self._warned_at < WARN_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused since the last line)" if self._unlogged else ""
        self._warned_at, self._unlogged = now, 0
        if why == OVER_PEER_LIMIT:
            log.warning(
                "%s port: %s holds %d connections, its limit per client address (%s); its next ones "
                "are closed. Behind NAT or a load balancer that hides client addresses, raise it%s",
                self.name,
                shown(host or "?", 64),
                self.max_per_peer,
                self.flags[1] or "per-address limit",
                more,
            )
        else:
            log.warning(
                "%s port: %d connections open, its limit (%s); the next ones are closed%s",
                self.name,
                self.max_clients,
                self.flags[0] or "connection limit",
                more,
            )

    async def start(self, host: str, port: int, backend_port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (every interface for "", "::" or "0.0.0.0", as gRPC does;
        with SO_REUSEPORT only if ``reuse_port``: a node's workers share their port, and a
        second control plane on its ports fails to start); the bound port."""
        self.backend_port = backend_port
        every = host in ("", "::", "[::]", "0.0.0.0")
        return await self.listen(
            None if every else host.strip("[]"), port, lambda: _Client(self), reuse_port=reuse_port
        )


class _Client(ClientSide):
    """A client's connection, relayed to the server once the loopback connection is open."""

    def __init__(self, front: ConnectionFront) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._backend: asyncio.Transport | None = None
        self._port = 0
        self._host: str | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        front = self._front
        self._transport = transport
        front.clients.add(self)
        if len(front.clients) > front.max_clients:
            self._refuse(OVER_LIMIT)
            return
        self._host, within = front.peer_places.take(transport, front.max_per_peer)
        if not within:
            self._refuse(OVER_PEER_LIMIT)
            return
        transport.pause_reading()  # until the loopback connection is open
        self._connecting = asyncio.get_running_loop().create_task(
            self._connect(_grpc_peer(transport.get_extra_info("peername")))
        )

    def _refuse(self, why: str) -> None:
        front = self._front
        front.refused[why] += 1
        if front.on_refused is not None:
            front.on_refused(front.name, why)
        front.warn(why, self._host)
        self._closed = True
        self.abort()

    async def _connect(self, peer: str | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            backend, _ = await loop.create_connection(
                lambda: Backend(self), BACKEND_HOST, self._front.backend_port
            )
        except OSError as exc:
            log.warning(
                "%s port's front: cannot reach its server on port %d: %s",
                self._front.name,
                self._front.backend_port,
                exc,
            )
            self.abort()
            return
        assert isinstance(backend, asyncio.Transport)
        if self._closed:
            backend.close()
            return
        self._backend = backend
        self._port = backend.get_extra_info("sockname")[1]
        if peer is not None:
            _peers[self._port] = peer  # filed before the server gets a byte
        assert self._transport is not None
        self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._backend is not None:
            self._backend.write(data)

    def eof_received(self) -> bool:
        if self._backend is not None and self._backend.can_write_eof():
            self._backend.write_eof()
            return True  # half-closed: the server may still answer
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        front = self._front
        if self._port:
            _peers.pop(self._port, None)
        if self._backend is not None:
            self._backend.close()
        elif self._connecting is not None:
            self._connecting.cancel()
        if self._host is not None:
            front.peer_places.give(self._host)
            self._host = None
        front.gone(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ---- the server's side ----

    def from_backend(self, data: bytes) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(data)

    def backend_closed(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()

    def backend_paused(self, paused: bool) -> None:
        """The server reads slower than the client sends."""
        if self._transport is None or self._closed:
            return
        if paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()
