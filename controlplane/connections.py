"""How many connections each of the control plane's ports holds at once (and how many calls
each connection holds: ``MAX_CONCURRENT_STREAMS``), and the options its two gRPC servers share.

Every connection is a file descriptor, and the two ports are open to whoever reaches them
(the node port before any certificate is checked). Without a cap, a client that opens
connections and says nothing took every descriptor the process may have: the admin port
stopped answering, and so did the database pool. Each port now has its own cap
(``--max-connections``, ``--node-max-connections``): one connection over it is closed at
once, so a flood of one port leaves the other, and the database, their descriptors. A
connection that has not finished its TLS and HTTP/2 handshake within
``HANDSHAKE_TIMEOUT_MS`` is closed (gRPC's default waits two minutes), and one that has
finished it is closed once it has had no call in flight for ``--connection-idle-timeout``
(``DEFAULT_IDLE_TIMEOUT_S``; gRPC's default never): clients that connected and then said
nothing no longer hold a port's slots for good. A call in flight is not idleness: a node's
config and evidence streams stay open; a client whose idle connection was closed opens a new
one for its next call (gRPC does, unasked). A call in flight needs no credentials on the admin
port (a health ``Watch``, or any call whose request never comes): there a connection is also
closed ``--connection-max-age`` after it opened, its calls given ``AGE_GRACE_S`` to end.
A node port connection, which carries a node's long config and evidence streams, was never
closed at all: a node whose certificate was revoked, or whose CA was rotated out, kept the
stream it opened before, and a node never came back through the handshake (nor to another
replica). It now ends ``--node-connection-max-age`` (``DEFAULT_NODE_MAX_AGE_S``, generous:
each end costs a node a reconnect and a re-sync) after it opened, with the same grace; the
node's sync client and shipper reconnect (the shipper resends what was not acknowledged,
which the store takes as duplicates).

Unset, a cap follows the open-files limit as the node's doors do (``dataplane.open_files``):
the CLI raises the soft limit to the hard one, ``OTHER_FILES`` stay for the process and the
rest is shared between the ports, at most ``DEFAULT_MAX_CONNECTIONS`` each.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Final

from dataplane.open_files import per_peer_cap

OTHER_FILES: Final = 256
"""Descriptors the control plane holds besides its ports' connections: the database pool,
the evidence workers' pipes, the metrics endpoint, files."""
DEFAULT_MAX_CONNECTIONS: Final = 10_000
HANDSHAKE_TIMEOUT_MS: Final = 10_000
DEFAULT_IDLE_TIMEOUT_S: Final = 300.0
DEFAULT_MAX_AGE_S: Final = 1800.0
DEFAULT_NODE_MAX_AGE_S: Final = 3600.0
AGE_GRACE_S: Final = 600.0
"""How long an aged connection's calls (an evidence export, say) may still run."""
MAX_CONCURRENT_STREAMS: Final = 100
"""Calls one connection holds at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; gRPC's default
is unbounded): a node holds a few (config sync, evidence, quota), an admin client one at a
time; past it a call waits at its client for one of the connection's calls to end."""


@dataclass(frozen=True, slots=True)
class Caps:
    admin: int
    node: int


def open_files_limit() -> int | None:
    """The soft limit on open files now (None: none)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def connection_caps(
    limit: int | None, *, admin: int | None, node: int | None, fds_per_connection: int = 1
) -> Caps:
    """Each port's cap: ``admin``/``node`` as given, or a share of ``limit`` for connections
    of ``fds_per_connection`` descriptors each (three behind a front: ``dataplane.connection_front``)."""
    share = (
        DEFAULT_MAX_CONNECTIONS
        if limit is None
        else max(min((limit - OTHER_FILES) // (2 * fds_per_connection), DEFAULT_MAX_CONNECTIONS), 1)
    )
    return Caps(admin if admin is not None else share, node if node is not None else share)


def per_peer(setting: int | None, cap: int) -> int:
    """One client address's cap at a port whose cap is ``cap``: ``setting`` as given (0: not
    counted), else 1/``PER_PEER_SHARE`` of ``cap``, at least ``MIN_PER_PEER`` (as the node's
    doors, ``dataplane.open_files.per_peer_cap``)."""
    return per_peer_cap(cap) if setting is None else setting


def server_options(
    max_message_bytes: int,
    max_connections: int,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
    max_age: tuple[float, float] | None = None,
) -> list[tuple[str, int]]:
    """Options of both gRPC servers: ``idle_timeout`` and ``max_age`` (age, grace) in seconds."""
    aged = (
        []
        if max_age is None
        else [
            ("grpc.max_connection_age_ms", _ms(max_age[0])),
            ("grpc.max_connection_age_grace_ms", _ms(max_age[1])),
        ]
    )
    return [
        *aged,
        # gRPC binds with SO_REUSEPORT unless told not to: a second control plane started
        # on these ports (another database, another signing key) would silently take a
        # share of the admins' and nodes' connections.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.max_connection_idle_ms", _ms(idle_timeout)),
    ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
