"""The control plane's two ports: where each listens (its front that counts client
addresses, ``dataplane.connection_front``, or gRPC itself) and the node port's mutual TLS."""

from __future__ import annotations

import logging
from datetime import datetime

import grpc

from controlplane.connections import per_peer
from controlplane.identity.ca import NodeCaKey
from controlplane.settings import ControlPlaneSettings
from dataplane.connection_front import BACKEND_HOST, ConnectionFront
from signalbox.tls import host_of

log = logging.getLogger("controlplane.app")

BACKEND = f"{BACKEND_HOST}:0"
"""Where a gRPC server behind a front listens: an ephemeral loopback port."""


def front_of(name: str, cap: int, setting: int | None) -> ConnectionFront | None:
    """The front of port ``name`` (admin, node; None: gRPC listens on it itself)."""
    max_per_peer = per_peer(setting, cap)
    if max_per_peer == 0:
        return None
    flag = "--max-connections" if name == "admin" else "--node-max-connections"
    return ConnectionFront(name, max_clients=cap, max_per_peer=max_per_peer, flags=(flag, f"{flag}-per-peer"))


async def listen_on(front: ConnectionFront | None, listen: str, port: int, flag: str) -> str:
    """The address a port serves on: its front's, started in front of the server's loopback
    ``port``, or the server's own ``port``."""
    host, _, wanted = listen.rpartition(":")
    if front is not None:
        try:
            port = await front.start(host, int(wanted), port)
        except (OSError, ValueError) as exc:
            raise OSError(
                f"cannot listen on {listen} ({flag}): in use, or not an address of this host ({exc})"
            ) from exc
    return f"{host}:{port}"


def add_node_port(
    server: grpc.aio.Server,
    s: ControlPlaneSettings,
    node_ca: NodeCaKey,
    started_at: datetime | None,
    bind: str | None = None,
) -> int:
    """Bind the node port's server (to ``bind`` instead of ``--node-listen`` behind a front):
    mutual TLS with a server certificate of the node CA, or plaintext with ``--insecure``."""
    if s.tls.insecure:
        log.warning(
            "INSECURE: --insecure makes the node port %s plaintext: any process that reaches it can "
            "read every snapshot and claim any node id. For local development only.",
            s.node_listen,
        )
        credentials = None
    else:
        hosts = [host_of(s.node_listen), "localhost", "127.0.0.1", "::1", *s.node_advertise_names]
        cert_pem, key_pem = node_ca.issue_server(hosts, started_at)
        credentials = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=node_ca.pem, require_client_auth=True
        )
    address = s.node_listen if bind is None else bind
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio raises rather than return 0 (signalbox.tls.add_port)
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {s.node_listen} (--node-listen): in use, or not an address of this host"
        )
    return port
