"""How many connections a node's doors hold at once, from what the system lets it open.

Every caller's connection is a file descriptor (behind a TLS front, three: the caller's,
the front's to its door and the door's end of it). A flood of idle connections must not
take the descriptors the node needs for its callers, its evidence and its upstreams, so
each door has a cap (``--http-max-connections``, ``--grpc-max-connections``): the HTTP
door answers one more with 503, gRPC closes it, a TLS front cuts it before the handshake.

Unset, a cap follows the open-files limit, as HAProxy derives its ``maxconn``: the node
raises its soft limit to the hard one (as Go's runtime does; many systems start processes
at a soft 1,024), keeps ``OTHER_FILES`` for itself and shares the rest between its doors,
at most ``DEFAULT_MAX_CONNECTIONS`` each. A cap set by hand above what the limit allows is
kept, with a warning naming both.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from typing import Final

OTHER_FILES: Final = 256
"""Descriptors a node holds besides its callers' connections: evidence segments and
locks, the control plane's stream, upstream pools, the metrics endpoint."""
DEFAULT_MAX_CONNECTIONS: Final = 10_000
"""A door's cap when the open-files limit allows more (or has none)."""
DEFAULT_GRPC_MAX_STREAMS: Final = 1_000
"""Calls one gRPC connection holds at once: generous, as a service multiplexes its calls over
one channel, yet bounded (gRPC's default is not): past it a client waits, the node is not
flooded through one connection."""
DEFAULT_GRPC_IDLE_TIMEOUT_S: Final = 300.0
DEFAULT_GRPC_MAX_AGE_S: Final = 1800.0
GRPC_AGE_GRACE_S: Final = 600.0
"""How long an aged gRPC connection's calls may still run (a stream's default budget)."""
GRPC_HANDSHAKE_TIMEOUT_MS: Final = 10_000
"""A gRPC connection that has not finished its TLS and HTTP/2 handshake in this long is closed
(gRPC's default waits two minutes)."""
FRONTED_FILES: Final = 3
"""Descriptors per caller's connection behind a TLS front; 1 otherwise."""
MIN_PER_PEER: Final = 8
"""The least a client address may hold by default, however small the door's cap."""
PER_PEER_SHARE: Final = 8
"""By default one client address may hold 1/8 of a door's cap."""


def per_peer_cap(max_connections: int) -> int:
    """One client address's default cap: 1/``PER_PEER_SHARE`` of ``max_connections``, at
    least ``MIN_PER_PEER`` (never more than ``max_connections``)."""
    return min(max(max_connections // PER_PEER_SHARE, MIN_PER_PEER), max_connections)


def raise_open_files() -> int | None:
    """Raise the soft limit on open files to the hard one; the limit now (None: none)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # an unlimited hard limit the kernel caps
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True, slots=True)
class Caps:
    http: int
    grpc: int
    warning: str | None
    """Set when caps given by hand may need more descriptors than the limit allows."""


def connection_caps(
    limit: int | None,
    *,
    http: int | None,
    grpc: int | None,
    http_door: bool,
    fronted: bool,
    grpc_fronted: bool = False,
) -> Caps:
    """Each door's cap: ``http``/``grpc`` as given, or shared out of ``limit``. ``fronted``:
    both doors behind TLS fronts; ``grpc_fronted``: the gRPC door behind a counting front
    (``dataplane.connection_front``), three descriptors a connection too."""
    http_files = FRONTED_FILES if fronted else 1
    grpc_files = FRONTED_FILES if fronted or grpc_fronted else 1
    per = grpc_files + (http_files if http_door else 0)
    if limit is None:
        share = DEFAULT_MAX_CONNECTIONS
    else:
        share = max(min((limit - OTHER_FILES) // per, DEFAULT_MAX_CONNECTIONS), 1)
    caps = Caps(http if http is not None else share, grpc if grpc is not None else share, None)
    needed = caps.grpc * grpc_files + (caps.http * http_files if http_door else 0) + OTHER_FILES
    if limit is not None and needed > limit and (http is not None or grpc is not None):
        given = " and ".join(
            f"--{door}-max-connections {cap}"
            for door, cap, set_by_hand in (
                ("http", caps.http, http_door and http is not None),
                ("grpc", caps.grpc, grpc is not None),
            )
            if set_by_hand
        )
        caps = Caps(
            caps.http,
            caps.grpc,
            f"open files are limited to {limit}, fewer than the {needed} that {given} may need: "
            "raise the limit (ulimit -n, systemd's LimitNOFILE=) or lower the cap",
        )
    return caps
