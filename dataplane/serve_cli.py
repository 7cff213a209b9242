"""``signalbox dataplane serve``: its flags (each with a ``SIGNALBOX_*`` environment variable,
declared through ``signalbox.settings`` so the README lists them all), their checks, and the
node (or, with ``--workers``, the supervisor of its workers) they start."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from pathlib import Path

from dataplane.collector import pace_for_serving
from dataplane.config.model import DeploymentMode, Scope
from dataplane.deadlines import DEFAULT_DEADLINE_S, DEFAULT_STREAM_DEADLINE_S
from dataplane.errors import EvidenceChainBroken, SnapshotFileInvalid
from dataplane.files import read_regular
from dataplane.http.messages import Limits as HttpLimits
from dataplane.open_files import connection_caps, raise_open_files
from dataplane.providers.credentials import DEFAULT_ENV_PREFIX, env_name_problem
from dataplane.providers.sealing import SealingError, load_private_key
from dataplane.quota import DEFAULT_LEASE_INTERVAL
from dataplane.routing.health import DEFAULT_MAX_RETRY_AFTER_S
from dataplane.serve_flags import add_door_and_evidence_flags, connection_counts_problem
from dataplane.snapshot.background import ESCALATE_AFTER_S
from dataplane.snapshot.hash_key import decode_hash_keys, read_hash_key_file
from dataplane.snapshot.pin_watch import DEFAULT_POLL_INTERVAL_S
from dataplane.trust_cli import add_trust_key, trust_key_paths
from dataplane.workers import MAX_WORKERS, supervise
from dataplane.workers import resolve as resolve_workers
from signalbox import settings, tls

FLAG_FILE_BYTES = 64 * 1024
"""The most read of a small file a flag names (the enrollment token, the sealing key): opened
without blocking and refused when not a regular file (``read_regular``), so a FIFO or a
device given by mistake fails the start at once instead of hanging it."""

SERVE = "dataplane serve"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_node_id: str) -> None:
    """Add ``signalbox dataplane serve``."""
    serve = sub.add_parser("serve", help="serve the Infer API from verified snapshots")
    add = settings.add
    add(
        serve,
        "--listen",
        env="SIGNALBOX_DATAPLANE_LISTEN",
        type=settings.address,
        default="127.0.0.1:7701",
        help="HOST:PORT of the Infer API and grpc health (port 0 picks a free one)",
        command=SERVE,
    )
    add(
        serve,
        "--workers",
        env="SIGNALBOX_WORKERS",
        default=0,
        type=int,
        help="processes of this node sharing its ports (SO_REUSEPORT; the ports must be fixed), each "
        "with its own evidence chain; 0: one per core this process may run on, at most 64 (one when "
        "--listen or --http-listen has port 0, which workers cannot share)",
        command=SERVE,
    )
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    add(
        serve,
        "--control-plane",
        env="SIGNALBOX_CONTROL_PLANE",
        type=settings.address,
        default=None,
        help="HOST:PORT of the control plane's node port (its --node-listen: config sync over mutual "
        "TLS with this node's certificate from <data-dir>/identity); unset: none",
        command=SERVE,
    )
    add(
        serve,
        "--enroll-address",
        env="SIGNALBOX_ENROLL_ADDRESS",
        type=settings.address,
        default=None,
        help="HOST:PORT of the control plane's admin port (its --listen), where --enroll-token is "
        "exchanged for a certificate (TLS per --control-plane-ca; plaintext to loopback)",
        command=SERVE,
    )
    add(
        serve,
        "--enroll-token",
        env="SIGNALBOX_ENROLL_TOKEN",
        default=None,
        help="one-time token from `signalbox admin node enroll-token`, used when there is no valid "
        "certificate yet (prefer the env var or --enroll-token-file: flags show in process listings)",
        command=SERVE,
    )
    add(
        serve,
        "--enroll-token-file",
        env="SIGNALBOX_ENROLL_TOKEN_FILE",
        default=None,
        help="file holding the enrollment token",
        command=SERVE,
    )
    add(
        serve,
        "--sync-max-message-bytes",
        env="SIGNALBOX_SYNC_MAX_MESSAGE_BYTES",
        default=64 * 1024 * 1024,
        type=int,
        help="largest snapshot message taken from the control plane; a larger one is NACKed",
        command=SERVE,
    )
    add(
        serve,
        "--snapshot-idle-wait-seconds",
        env="SIGNALBOX_SNAPSHOT_IDLE_WAIT_SECONDS",
        default=ESCALATE_AFTER_S,
        type=float,
        help="seconds a snapshot being applied waits for idle CPU before it takes a small share of busy CPU",
        command=SERVE,
    )
    add(
        serve,
        "--sync-heartbeat-seconds",
        env="SIGNALBOX_SYNC_HEARTBEAT_SECONDS",
        default=15.0,
        type=float,
        help="seconds between heartbeats to the control plane (its last_seen for this node)",
        command=SERVE,
    )
    add(
        serve,
        "--sealing-key",
        env="SIGNALBOX_SEALING_KEY",
        default=None,
        help="file with this node group's X25519 private key (`signalbox dataplane sealing-key generate`): "
        "opens provider credentials sealed to the group; unset: such providers are unavailable",
        command=SERVE,
    )
    add(
        serve,
        "--api-key-hash-key-file",
        env="SIGNALBOX_API_KEY_HASH_KEY_FILE",
        default=None,
        help="file with the live versions of the control plane's API-key hash key (from `signalbox controlplane "
        "export-api-key-hash-key`; a one-key base64 file of earlier versions is version 1), for a node without "
        "a control plane; export it again after a rotation; unset: the versions the control plane sends",
        command=SERVE,
    )
    tls.add_server_flags(serve, env_prefix="SIGNALBOX_DATAPLANE", command=SERVE)
    add(
        serve,
        "--control-plane-ca",
        env="SIGNALBOX_CONTROL_PLANE_CA",
        default=None,
        help="PEM CA the control plane's admin port (--enroll-address) must chain to (unset: plaintext "
        "to loopback, else the system's roots); the node port is pinned to the node CA from enrollment",
        command=SERVE,
    )
    add(
        serve,
        "--control-plane-cert",
        env="SIGNALBOX_CONTROL_PLANE_CERT",
        default=None,
        help="PEM client certificate for the node port instead of the enrolled one (with "
        "--control-plane-key; no enrollment or renewal then)",
        command=SERVE,
    )
    add(
        serve,
        "--control-plane-key",
        env="SIGNALBOX_CONTROL_PLANE_KEY",
        default=None,
        help="PEM private key of --control-plane-cert",
        command=SERVE,
    )
    add_trust_key(serve, SERVE)
    add(
        serve,
        "--node-id",
        env="SIGNALBOX_NODE_ID",
        type=settings.node_id,
        default=default_node_id,
        help="this node's id (default node-<hostname>)",
        command=SERVE,
    )
    add(
        serve,
        "--data-dir",
        type=settings.directory,
        env="SIGNALBOX_NODE_DATA_DIR",
        default="./var/node",
        help="where the last-known-good snapshot and evidence are kept",
        command=SERVE,
    )
    add(
        serve,
        "--mode",
        env="SIGNALBOX_NODE_MODE",
        default="cloud",
        help="deployment mode: cloud, on-prem or air-gapped",
        command=SERVE,
    )
    add(
        serve,
        "--deployment",
        env="SIGNALBOX_NODE_DEPLOYMENT",
        default="",
        help="scope: the deployment this node belongs to",
        command=SERVE,
    )
    add(
        serve,
        "--node-group",
        env="SIGNALBOX_NODE_GROUP",
        default="",
        help="scope: the node group this node belongs to",
        command=SERVE,
    )
    add(
        serve,
        "--site",
        env="SIGNALBOX_NODE_SITE",
        default="",
        help="scope: the site this node runs in",
        command=SERVE,
    )
    add(
        serve,
        "--snapshot",
        env="SIGNALBOX_SNAPSHOT_FILE",
        default=None,
        help="air-gapped pin: serve this signed snapshot file, no control plane; a newer signed "
        "file written there later is applied without a restart",
        command=SERVE,
    )
    add(
        serve,
        "--snapshot-poll-interval",
        env="SIGNALBOX_SNAPSHOT_POLL_INTERVAL",
        default=DEFAULT_POLL_INTERVAL_S,
        type=float,
        help="how often (seconds) the --snapshot file is checked for a replacement",
        command=SERVE,
    )
    add(
        serve,
        "--allow-expired",
        env="SIGNALBOX_ALLOW_EXPIRED",
        default=False,
        action="store_true",
        help="serve snapshots past their expiry (sites without trusted time)",
        command=SERVE,
    )
    add(
        serve,
        "--credential-env-prefix",
        env="SIGNALBOX_CREDENTIAL_ENV_PREFIX",
        default=DEFAULT_ENV_PREFIX,
        help="provider credentials may only be read from env vars starting with this",
        command=SERVE,
    )
    add(
        serve,
        "--credential-dir",
        type=settings.existing_directory,
        env="SIGNALBOX_CREDENTIAL_DIR",
        default=None,
        help="provider credential files may only be read inside this directory (default <data-dir>/credentials)",
        command=SERVE,
    )
    add(
        serve,
        "--reset-high-water-mark",
        env="SIGNALBOX_RESET_HIGH_WATER_MARK",
        default=False,
        action="store_true",
        help="start although hwm.json is missing next to a last-known-good (rollback protection "
        "restarts from that snapshot; logged loudly)",
        command=SERVE,
    )
    add(
        serve,
        "--drain-seconds",
        env="SIGNALBOX_DRAIN_SECONDS",
        default=10.0,
        type=float,
        help="on SIGTERM, how long in-flight calls and streams may finish",
        command=SERVE,
    )
    add(
        serve,
        "--default-timeout",
        env="SIGNALBOX_DEFAULT_TIMEOUT",
        default=DEFAULT_DEADLINE_S,
        type=float,
        help="seconds a call (one answer, embeddings) may take when its caller sets no deadline",
        command=SERVE,
    )
    add(
        serve,
        "--stream-timeout",
        env="SIGNALBOX_STREAM_TIMEOUT",
        default=DEFAULT_STREAM_DEADLINE_S,
        type=float,
        help="seconds a streamed answer may take when its caller sets no deadline",
        command=SERVE,
    )
    add(
        serve,
        "--max-retry-after",
        env="SIGNALBOX_MAX_RETRY_AFTER",
        default=DEFAULT_MAX_RETRY_AFTER_S,
        type=float,
        help="longest upstream Retry-After honoured, in seconds (longer ones are cut to this)",
        command=SERVE,
    )
    add(
        serve,
        "--quota-lease-ms",
        env="SIGNALBOX_QUOTA_LEASE_MS",
        default=int(DEFAULT_LEASE_INTERVAL * 1000),
        type=int,
        help="milliseconds between quota leases from the control plane, or on an air-gapped node from "
        "its own ledger (rate limits and budgets): how soon quota moves to the busy nodes or workers "
        "and an exhausted budget stops every node",
        command=SERVE,
    )
    add_door_and_evidence_flags(serve, command=SERVE)
    settings.add_log_level(serve, command=SERVE)
    serve.set_defaults(handler=serve_command)


def serve_command(ns: argparse.Namespace) -> int:
    from dataplane.app import DataPlaneNode
    from dataplane.node_settings import NodeSettings

    if ns.log_format not in settings.LOG_FORMATS:
        print(
            f"--log-format: {ns.log_format!r} is not one of {', '.join(settings.LOG_FORMATS)}",
            file=sys.stderr,
        )
        return 2
    level = settings.configure_logging(
        ns.log_level, ns.log_format, service="dataplane", node=ns.node_id, worker=ns.worker_index or 0
    )
    # httpx logs every upstream request at INFO: per-request logging on the hot
    # path, so it is only shown when the node itself logs at DEBUG.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING) if level > logging.DEBUG else level)
    try:
        mode = DeploymentMode(ns.mode)
    except ValueError:
        print(f"--mode: {ns.mode!r} is not one of cloud, on-prem, air-gapped", file=sys.stderr)
        return 2
    for flag, seconds in (("--default-timeout", ns.default_timeout), ("--stream-timeout", ns.stream_timeout)):
        if not (seconds > 0 and math.isfinite(seconds)):
            print(f"{flag}: {seconds:g} is not a positive number of seconds", file=sys.stderr)
            return 2
    if not (ns.max_retry_after > 0 and math.isfinite(ns.max_retry_after)):
        print(f"--max-retry-after: {ns.max_retry_after} is not a positive number of seconds", file=sys.stderr)
        return 2
    if not (ns.snapshot_poll_interval > 0 and math.isfinite(ns.snapshot_poll_interval)):
        print(
            f"--snapshot-poll-interval: {ns.snapshot_poll_interval} is not a positive number of seconds",
            file=sys.stderr,
        )
        return 2
    if not (ns.sync_heartbeat_seconds > 0 and math.isfinite(ns.sync_heartbeat_seconds)):
        print(
            f"--sync-heartbeat-seconds: {ns.sync_heartbeat_seconds} is not a positive number of seconds",
            file=sys.stderr,
        )
        return 2
    if not math.isfinite(ns.snapshot_idle_wait_seconds) or ns.snapshot_idle_wait_seconds < 0:
        print(
            f"--snapshot-idle-wait-seconds: {ns.snapshot_idle_wait_seconds} is not a number of seconds >= 0",
            file=sys.stderr,
        )
        return 2
    if not math.isfinite(ns.drain_seconds) or ns.drain_seconds < 0:
        # NaN or a negative grace is no drain at all, infinity one no SIGTERM ever ends (the
        # supervisor waits drain + margin for its workers): bad usage, not a setting.
        print(f"--drain-seconds: {ns.drain_seconds:g} is not a number of seconds >= 0", file=sys.stderr)
        return 2
    if ns.workers < 0:
        print(f"--workers: {ns.workers} is not a number of processes (0: one per core)", file=sys.stderr)
        return 2
    if ns.workers > MAX_WORKERS:
        print(
            f"--workers: {ns.workers} is more than the {MAX_WORKERS} workers a node may run "
            "(the control plane leases quota to that many)",
            file=sys.stderr,
        )
        return 2
    ephemeral = any(
        address.rpartition(":")[2] == "0"
        for address in (ns.listen, *([ns.http_listen] if ns.http_listen else []))
    )
    # One per core by default; a port the kernel picks (0) cannot be shared, so then one.
    workers = 1 if ns.workers == 0 and ephemeral else resolve_workers(ns.workers)
    if ns.worker_index is not None and not 0 <= ns.worker_index < workers:
        print(f"--worker-index: {ns.worker_index} is not below --workers {workers}", file=sys.stderr)
        return 2
    for flag, seconds in (
        ("--http-header-timeout", ns.http_header_timeout),
        ("--http-body-timeout", ns.http_body_timeout),
        ("--http-keepalive", ns.http_keepalive),
        ("--grpc-max-age", ns.grpc_max_age),
    ):
        if not (seconds > 0 and math.isfinite(seconds)):
            print(f"{flag}: {seconds:g} is not a positive number of seconds", file=sys.stderr)
            return 2
    for flag, address in (("--http-listen", ns.http_listen), ("--metrics-listen", ns.metrics_listen)):
        if address is not None and not _host_port(address):
            print(f"{flag}: {address!r} is not HOST:PORT", file=sys.stderr)
            return 2
    for flag, value, what in (
        ("--http-max-body-bytes", ns.http_max_body_bytes, "number of bytes"),
        ("--evidence-checkpoint-records", ns.evidence_checkpoint_records, "count"),
        ("--evidence-checkpoint-ms", ns.evidence_checkpoint_ms, "number of milliseconds"),
        ("--evidence-ship-ms", ns.evidence_ship_ms, "number of milliseconds"),
        ("--quota-lease-ms", ns.quota_lease_ms, "number of milliseconds"),
        ("--evidence-segment-bytes", ns.evidence_segment_bytes, "number of bytes"),
        ("--evidence-spool-max-bytes", ns.evidence_spool_max_bytes, "number of bytes"),
    ):
        if value < 1:
            print(f"{flag}: {value} is not a positive {what}", file=sys.stderr)
            return 2
    if ns.evidence_drain_ms < 0:
        print(
            f"--evidence-drain-ms: {ns.evidence_drain_ms} is not 0 or a positive number of milliseconds",
            file=sys.stderr,
        )
        return 2
    problem = connection_counts_problem(ns)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    if ns.sync_max_message_bytes < 1:
        print(
            f"--sync-max-message-bytes: {ns.sync_max_message_bytes} is not a positive size", file=sys.stderr
        )
        return 2
    prefix_problem = (
        env_name_problem(ns.credential_env_prefix) if ns.credential_env_prefix else "must not be empty"
    )
    if prefix_problem:
        print(f"--credential-env-prefix: {prefix_problem}", file=sys.stderr)
        return 2
    if mode is DeploymentMode.AIR_GAPPED and ns.control_plane and not ns.snapshot:
        logging.getLogger("signalbox.dataplane").warning(
            "air-gapped node configured with a control plane; is that intended?"
        )
    token = ns.enroll_token or None
    if ns.enroll_token_file and not token:
        try:
            token = read_regular(Path(ns.enroll_token_file), FLAG_FILE_BYTES).decode().strip() or None
        except UnicodeDecodeError:
            print(f"--enroll-token-file: {ns.enroll_token_file} is not UTF-8 text", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"--enroll-token-file: cannot read {ns.enroll_token_file}: {exc.strerror}", file=sys.stderr)
            return 2
    hash_keys = None
    if ns.api_key_hash_key_file:
        try:
            hash_keys = decode_hash_keys(
                read_hash_key_file(Path(ns.api_key_hash_key_file)), "--api-key-hash-key-file"
            )
        except OSError as exc:
            print(
                f"--api-key-hash-key-file: cannot read {ns.api_key_hash_key_file}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    sealing_key = None
    if ns.sealing_key:
        try:
            sealing_key = load_private_key(
                read_regular(Path(ns.sealing_key), FLAG_FILE_BYTES), "--sealing-key"
            )
        except OSError as exc:
            print(f"--sealing-key: cannot read {ns.sealing_key}: {exc.strerror}", file=sys.stderr)
            return 2
        except SealingError as exc:
            print(exc, file=sys.stderr)
            return 2
    caps = connection_caps(
        raise_open_files(),
        http=ns.http_max_connections,
        grpc=ns.grpc_max_connections,
        http_door=ns.http_listen is not None,
        fronted=bool(ns.tls_client_ca),
        grpc_fronted=ns.grpc_max_connections_per_peer != 0,
    )
    if caps.warning:
        logging.getLogger("signalbox.dataplane").warning("%s", caps.warning)
    node_settings = NodeSettings(
        listen=ns.listen,
        http_listen=ns.http_listen,
        metrics_listen=ns.metrics_listen,
        http_limits=HttpLimits(
            max_body_bytes=ns.http_max_body_bytes,
            header_timeout=ns.http_header_timeout,
            body_timeout=ns.http_body_timeout,
            keepalive_timeout=ns.http_keepalive,
            max_connections=caps.http,
            max_connections_per_peer=ns.http_max_connections_per_peer,
        ),
        grpc_max_connections=caps.grpc,
        grpc_max_connections_per_peer=ns.grpc_max_connections_per_peer,
        grpc_max_streams=ns.grpc_max_streams,
        grpc_max_age=ns.grpc_max_age,
        sealing_key=sealing_key,
        api_key_hash_keys=hash_keys,
        control_plane=ns.control_plane or None,
        enroll_token=token,
        enroll_address=ns.enroll_address or None,
        sync_max_message_bytes=ns.sync_max_message_bytes,
        snapshot_idle_wait=ns.snapshot_idle_wait_seconds,
        sync_heartbeat_interval=ns.sync_heartbeat_seconds,
        trust_keys=trust_key_paths(ns),
        node_id=ns.node_id,
        data_dir=Path(ns.data_dir),
        mode=mode,
        scope=Scope(ns.deployment, ns.node_group, ns.site),
        snapshot_file=Path(ns.snapshot) if ns.snapshot else None,
        snapshot_poll_interval=ns.snapshot_poll_interval,
        allow_expired=ns.allow_expired,
        credential_env_prefix=ns.credential_env_prefix,
        credential_dir=Path(ns.credential_dir) if ns.credential_dir else None,
        drain_seconds=ns.drain_seconds,
        max_retry_after=ns.max_retry_after,
        default_timeout=ns.default_timeout,
        stream_timeout=ns.stream_timeout,
        tls=tls.server_tls(ns),
        control_plane_tls=tls.ClientTls(
            ca=Path(ns.control_plane_ca) if ns.control_plane_ca else None,
            cert=Path(ns.control_plane_cert) if ns.control_plane_cert else None,
            key=Path(ns.control_plane_key) if ns.control_plane_key else None,
            insecure=ns.insecure,
        ),
        reset_high_water_mark=ns.reset_high_water_mark,
        evidence_checkpoint_records=ns.evidence_checkpoint_records,
        evidence_checkpoint_interval=ns.evidence_checkpoint_ms / 1000,
        evidence_segment_bytes=ns.evidence_segment_bytes,
        evidence_spool_max_bytes=ns.evidence_spool_max_bytes,
        evidence_ship_interval=ns.evidence_ship_ms / 1000,
        evidence_drain=ns.evidence_drain_ms / 1000,
        worker=ns.worker_index or 0,
        workers=workers,
        quota_lease_interval=ns.quota_lease_ms / 1000,
    )

    if ns.worker_index is None and workers > 1:
        if ephemeral:
            print(
                f"--workers {workers}: the workers share their ports, so --listen and --http-listen "
                "need fixed port numbers (not 0)",
                file=sys.stderr,
            )
            return 2
        return supervise(
            ns.argv, workers, ns.listen, ns.drain_seconds, shared=[ns.http_listen] if ns.http_listen else []
        )

    pace_for_serving()

    async def run() -> None:
        node = DataPlaneNode(node_settings)
        async with node:
            await node.serve()

    try:
        # The default event loop, not uvloop: grpc.aio polls on its own thread and
        # measured no faster under uvloop here, and only the default loop is what
        # grpc.aio is tested against. Under the HTTP door (bench/http_cpu.py, 3 pairs
        # of 2 rounds, 2026-11-30) uvloop saved ~4 % of node CPU per request, within
        # the bench's noise: the loop's own work is a small part of a request.
        asyncio.run(run())
    except (SnapshotFileInvalid, EvidenceChainBroken, ValueError, OSError) as exc:
        # Refusing to start is the answer to a tampered pin, high-water mark or evidence log.
        print(f"signalbox dataplane serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isascii() and port.isdecimal() and int(port) < 65536)
