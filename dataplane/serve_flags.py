"""The flags of ``signalbox dataplane serve`` for its HTTP front door, its metrics endpoint
and its evidence log (each with a ``SIGNALBOX_*`` environment variable, declared through
``signalbox.settings`` so the README lists them all); ``serve_cli`` checks their values."""

from __future__ import annotations

import argparse

from dataplane.evidence.log import DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_CHECKPOINT_RECORDS
from dataplane.evidence.segments import DEFAULT_SEGMENT_BYTES
from dataplane.evidence.shipper import DEFAULT_DRAIN as DEFAULT_EVIDENCE_DRAIN
from dataplane.evidence.shipper import DEFAULT_INTERVAL as DEFAULT_SHIP_INTERVAL
from dataplane.evidence.spool import DEFAULT_SPOOL_MAX_BYTES
from dataplane.http.messages import Limits as HttpLimits
from dataplane.open_files import DEFAULT_GRPC_MAX_AGE_S, DEFAULT_GRPC_MAX_STREAMS
from signalbox import settings


def add_door_and_evidence_flags(serve: argparse.ArgumentParser, *, command: str) -> None:
    """``--http-*``, ``--metrics-listen`` and ``--evidence-*``."""
    add = settings.add
    add(
        serve,
        "--http-listen",
        env="SIGNALBOX_HTTP_LISTEN",
        type=settings.address,
        default=None,
        help="HOST:PORT of the OpenAI-compatible HTTP front door (/v1/chat/completions, /v1/embeddings, "
        "/v1/models; TLS as the Infer API's); off when not given",
        command=command,
    )
    add(
        serve,
        "--metrics-listen",
        env="SIGNALBOX_METRICS_LISTEN",
        type=settings.address,
        default=None,
        help="HOST:PORT of the Prometheus endpoint (GET /metrics; worker 0 answers for every worker); "
        "off when not given",
        command=command,
    )
    add(
        serve,
        "--http-max-body-bytes",
        env="SIGNALBOX_HTTP_MAX_BODY_BYTES",
        default=HttpLimits().max_body_bytes,
        type=int,
        help="largest HTTP request body accepted (413 beyond)",
        command=command,
    )
    add(
        serve,
        "--http-header-timeout",
        env="SIGNALBOX_HTTP_HEADER_TIMEOUT",
        default=HttpLimits().header_timeout,
        type=float,
        help="seconds an HTTP request's headers may take to arrive (408 beyond)",
        command=command,
    )
    add(
        serve,
        "--http-body-timeout",
        env="SIGNALBOX_HTTP_BODY_TIMEOUT",
        default=HttpLimits().body_timeout,
        type=float,
        help="seconds an HTTP request's body may take to arrive after its headers (408 beyond)",
        command=command,
    )
    add(
        serve,
        "--http-keepalive",
        env="SIGNALBOX_HTTP_KEEPALIVE",
        default=HttpLimits().keepalive_timeout,
        type=float,
        help="seconds an idle HTTP keep-alive connection stays open",
        command=command,
    )
    add(
        serve,
        "--http-max-connections",
        env="SIGNALBOX_HTTP_MAX_CONNECTIONS",
        default=None,
        type=int,
        help="HTTP connections open at once per worker (one more is answered 503 and closed); "
        "default: a share of the open-files limit, at most 10000",
        command=command,
    )
    add(
        serve,
        "--http-max-connections-per-peer",
        env="SIGNALBOX_HTTP_MAX_CONNECTIONS_PER_PEER",
        default=None,
        type=int,
        help="HTTP connections one client address holds open at once per worker (one more is "
        "answered 503 and closed; loopback counts too); default: 1/8 of --http-max-connections, "
        "at least 8",
        command=command,
    )
    add(
        serve,
        "--grpc-max-connections",
        env="SIGNALBOX_GRPC_MAX_CONNECTIONS",
        default=None,
        type=int,
        help="gRPC connections open at once per worker (one more is closed, the caller sees UNAVAILABLE); "
        "default: a share of the open-files limit, at most 10000",
        command=command,
    )
    add(
        serve,
        "--grpc-max-connections-per-peer",
        env="SIGNALBOX_GRPC_MAX_CONNECTIONS_PER_PEER",
        default=None,
        type=int,
        help="gRPC connections one client address holds open at once per worker (one more is closed, "
        "the caller sees UNAVAILABLE; loopback counts too); default: 1/8 of --grpc-max-connections, "
        "at least 8; 0: not counted (gRPC listens on --listen itself)",
        command=command,
    )
    add(
        serve,
        "--grpc-max-streams",
        env="SIGNALBOX_GRPC_MAX_STREAMS",
        default=DEFAULT_GRPC_MAX_STREAMS,
        type=int,
        help="gRPC calls one connection holds at once (past it the client's next call waits for one "
        "of its calls to end)",
        command=command,
    )
    add(
        serve,
        "--grpc-max-age",
        env="SIGNALBOX_GRPC_MAX_AGE",
        default=DEFAULT_GRPC_MAX_AGE_S,
        type=float,
        help="seconds after which a gRPC connection is closed, its calls given 600 s more to end "
        "(clients reconnect for their next call)",
        command=command,
    )
    add(
        serve,
        "--evidence-checkpoint-records",
        env="SIGNALBOX_EVIDENCE_CHECKPOINT_RECORDS",
        default=DEFAULT_CHECKPOINT_RECORDS,
        type=int,
        help="sign a checkpoint of the evidence chain at least every this many records",
        command=command,
    )
    add(
        serve,
        "--evidence-checkpoint-ms",
        env="SIGNALBOX_EVIDENCE_CHECKPOINT_MS",
        default=int(DEFAULT_CHECKPOINT_INTERVAL * 1000),
        type=int,
        help="and every this many milliseconds while there are new records",
        command=command,
    )
    add(
        serve,
        "--evidence-segment-bytes",
        env="SIGNALBOX_EVIDENCE_SEGMENT_BYTES",
        default=DEFAULT_SEGMENT_BYTES,
        type=int,
        help="start a new evidence segment file beyond this many bytes (whole acknowledged segments are pruned)",
        command=command,
    )
    add(
        serve,
        "--evidence-spool-max-bytes",
        env="SIGNALBOX_EVIDENCE_SPOOL_MAX_BYTES",
        default=DEFAULT_SPOOL_MAX_BYTES,
        type=int,
        help="evidence not yet acknowledged by the control plane beyond which each tenant's "
        "spool_full policy applies (serve_and_alarm or refuse)",
        command=command,
    )
    add(
        serve,
        "--evidence-drain-ms",
        env="SIGNALBOX_EVIDENCE_DRAIN_MS",
        default=int(DEFAULT_EVIDENCE_DRAIN * 1000),
        type=int,
        help="on SIGTERM, after the drain: milliseconds to send the control plane the evidence "
        "and the last checkpoint it lacks (0: they stay on disk and ship at the next start)",
        command=command,
    )
    add(
        serve,
        "--evidence-ship-ms",
        env="SIGNALBOX_EVIDENCE_SHIP_MS",
        default=int(DEFAULT_SHIP_INTERVAL * 1000),
        type=int,
        help="milliseconds between evidence batches to the control plane while they are not full "
        "(a full batch is followed by the next at once)",
        command=command,
    )


def connection_counts_problem(ns: argparse.Namespace) -> str | None:
    """What is wrong with the doors' connection caps, naming the flag; None: nothing."""
    return settings.count_problem(
        (
            ("--http-max-connections", ns.http_max_connections, 1),
            ("--grpc-max-connections", ns.grpc_max_connections, 1),
            ("--http-max-connections-per-peer", ns.http_max_connections_per_peer, 1),
            ("--grpc-max-connections-per-peer", ns.grpc_max_connections_per_peer, 0),
            ("--grpc-max-streams", ns.grpc_max_streams, 1),
        )
    )
