"""How many connections one client address holds at a door of the node at once.

The door's cap (``--http-max-connections``) bounds its connections, not who holds them: one
address that opened that many (and said nothing, or reconnected in a loop) took every place,
and every other caller was answered 503 until it stopped. One address may now hold at most
``Limits.per_peer`` (``--http-max-connections-per-peer``; by default 1/8 of the door's cap,
at least 8): its next connection is answered 503 and closed, as one over the door's cap is,
and counted alike (``signalbox_http_connections_refused``), while other addresses connect.

Every address counts, loopback too (another process of the host is a client like any other;
a reverse proxy on loopback that carries many callers needs the flag raised). Behind the TLS
front the door's connections are all the front's own, from loopback: the front counts its
clients' addresses (``dataplane.tls_front``). A unix-socket client (a node's own workers) has
no address and is not counted. The gRPC door's own listener is gRPC's, which counts only
its connections (``--grpc-max-connections``); its TLS front, with a client CA, counts
addresses at 1/8 of that cap (``per_peer_cap``).
"""

from __future__ import annotations

import asyncio


class PeerPlaces:
    """Open connections by client address."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: dict[str, int] = {}

    def take(self, transport: asyncio.BaseTransport, cap: int) -> tuple[str | None, bool]:
        """Count a new connection against its address: (the address counted, None for none;
        whether it is within ``cap``). Counted either way: ``give`` it back when it closes."""
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or not peer:
            return None, True
        host = str(peer[0])
        held = self.held[host] = self.held.get(host, 0) + 1
        return host, held <= cap

    def give(self, host: str) -> None:
        left = self.held[host] - 1
        if left:
            self.held[host] = left
        else:
            del self.held[host]


def over_peer_cap(cap: int) -> str:
    return (
        f"this address has {cap} HTTP connections open to the node, its limit per client address "
        "(--http-max-connections-per-peer); retry shortly"
    )
