"""The control plane's connection flags (``controlplane serve``): each port's caps, in all
and per client address, and how long a connection may idle or live
(``controlplane.connections``). Imports nothing heavy: ``--help`` needs no database stack."""

from __future__ import annotations

import argparse
import math

from signalbox import settings


def add_connection_flags(serve: argparse.ArgumentParser, command: str) -> None:
    """The flags, on ``serve`` (the ``command`` they belong to)."""
    add = settings.add
    per_peer = (
        "connections one client address holds at {port} at once (one more is closed at once); "
        "unset: 1/8 of {cap}, at least 8; 0: not counted (gRPC listens on {port} itself)"
    )
    whole = (
        "connections {port} holds at once (one more is closed at once); unset: a share of the "
        "open-files limit, at most 10000"
    )
    for flag, env, text in (
        ("--max-connections", "MAX_CONNECTIONS", whole.format(port="--listen")),
        ("--node-max-connections", "NODE_MAX_CONNECTIONS", whole.format(port="--node-listen")),
        (
            "--max-connections-per-peer",
            "MAX_CONNECTIONS_PER_PEER",
            per_peer.format(port="--listen", cap="--max-connections"),
        ),
        (
            "--node-max-connections-per-peer",
            "NODE_MAX_CONNECTIONS_PER_PEER",
            per_peer.format(port="--node-listen", cap="--node-max-connections"),
        ),
    ):
        add(
            serve,
            flag,
            env=f"SIGNALBOX_CONTROLPLANE_{env}",
            default=None,
            type=int,
            help=text,
            command=command,
        )
    # Defaults: controlplane.connections' DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_AGE_S and
    # DEFAULT_NODE_MAX_AGE_S.
    for flag, env, default, text in (
        (
            "--connection-idle-timeout",
            "SIGNALBOX_CONTROLPLANE_CONNECTION_IDLE_TIMEOUT",
            300.0,
            "seconds a connection to either port stays open with no call in flight (a node's "
            "streams are calls in flight)",
        ),
        (
            "--connection-max-age",
            "SIGNALBOX_CONTROLPLANE_CONNECTION_MAX_AGE",
            1800.0,
            "seconds after which a connection to --listen is closed, its calls given 600 s more "
            "to end (clients reconnect for their next call)",
        ),
        (
            "--node-connection-max-age",
            "SIGNALBOX_CONTROLPLANE_NODE_CONNECTION_MAX_AGE",
            3600.0,
            "seconds after which a connection to --node-listen is closed, its streams given 600 s "
            "more to end (the node reconnects, presenting its certificate again, and re-syncs)",
        ),
    ):
        add(serve, flag, env=env, default=default, type=float, help=text, command=command)


def connection_flags_problem(ns: argparse.Namespace) -> str | None:
    """What is wrong with the connection flags' values, naming the flag; None: nothing."""
    for flag, seconds in (
        ("--connection-idle-timeout", ns.connection_idle_timeout),
        ("--connection-max-age", ns.connection_max_age),
        ("--node-connection-max-age", ns.node_connection_max_age),
    ):
        if not (seconds > 0 and math.isfinite(seconds)):
            return f"{flag}: {seconds} is not a positive number of seconds"
    return settings.count_problem(
        (
            ("--max-connections", ns.max_connections, 1),
            ("--node-max-connections", ns.node_max_connections, 1),
            ("--max-connections-per-peer", ns.max_connections_per_peer, 0),
            ("--node-max-connections-per-peer", ns.node_max_connections_per_peer, 0),
        )
    )
