"""``signalbox controlplane ...``.

controlplane serve            run the control plane (SIGTERM/SIGINT: drain and stop)
controlplane bootstrap-admin  create the first admin token (platform_admin); printed once, last line of stdout
controlplane export-snapshot  write a node group's newest signed envelope to a file (air-gapped pin)

``signalbox admin ...`` is a pure client of the Admin API and lives in the shell
(``signalbox.shell.admin_cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controlplane.connection_flags import add_connection_flags, connection_flags_problem
from controlplane.key_cli import (
    EXPORT_HASH_KEY,
    ROTATE_KEK,
    database,
    export_hash_key_command,
    failure,
    rotate_kek_command,
)
from dataplane.files import atomic_write
from dataplane.open_files import raise_open_files
from signalbox import settings, tls

SERVE = "controlplane serve"
BOOTSTRAP = "controlplane bootstrap-admin"
EXPORT = "controlplane export-snapshot"


def _database_settings(parser: argparse.ArgumentParser, command: str) -> None:
    settings.add(
        parser,
        "--database-url",
        env="SIGNALBOX_DATABASE_URL",
        default=None,
        help="PostgreSQL URL (postgresql+psycopg://...); unset: embedded PostgreSQL under --data-dir",
        command=command,
    )
    settings.add(
        parser,
        "--data-dir",
        type=settings.directory,
        env="SIGNALBOX_CONTROLPLANE_DATA_DIR",
        default="./var/controlplane",
        help="trust key, generated KEK and embedded PostgreSQL live here",
        command=command,
    )


def _kek_settings(parser: argparse.ArgumentParser, command: str, which: str) -> None:
    settings.add(
        parser, "--kek", env="SIGNALBOX_KEK", default=None, help=f"{which} (base64)", command=command
    )
    settings.add(
        parser,
        "--kek-file",
        env="SIGNALBOX_KEK_FILE",
        default=None,
        help=f"file holding {which}; unset with no --kek: <data-dir>/kek",
        command=command,
    )


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signalbox controlplane``."""
    parser = commands.add_parser("controlplane", help="run and manage the control plane")
    sub = parser.add_subparsers(dest="controlplane_command", required=True, metavar="COMMAND")
    add = settings.add

    serve = sub.add_parser("serve", help="serve the Admin API and config sync")
    add(
        serve,
        "--listen",
        env="SIGNALBOX_CONTROLPLANE_LISTEN",
        type=settings.address,
        default="127.0.0.1:7700",
        help="HOST:PORT for the Admin API, node enrollment and grpc health (port 0 picks a free one)",
        command=SERVE,
    )
    add(
        serve,
        "--node-listen",
        env="SIGNALBOX_CONTROLPLANE_NODE_LISTEN",
        type=settings.address,
        default="127.0.0.1:7703",
        help="HOST:PORT for config sync and certificate renewal: mutual TLS with node certificates "
        "issued by the node CA (plaintext only with --insecure)",
        command=SERVE,
    )
    add(
        serve,
        "--metrics-listen",
        env="SIGNALBOX_CONTROLPLANE_METRICS_LISTEN",
        type=settings.address,
        default=None,
        help="HOST:PORT of the Prometheus endpoint (GET /metrics: admin calls, NACKs, evidence "
        "ingest, nodes per group and their convergence lag); off when not given",
        command=SERVE,
    )
    add(
        serve,
        "--node-advertise-name",
        env="SIGNALBOX_CONTROLPLANE_NODE_ADVERTISE_NAME",
        default="",
        help="comma-separated DNS names or addresses nodes use to reach --node-listen (added to its "
        "certificate beside the listen host, localhost, 127.0.0.1 and ::1)",
        command=SERVE,
    )
    add(
        serve,
        "--node-cert-ttl",
        env="SIGNALBOX_NODE_CERT_TTL",
        default="30d",
        help="lifetime of node certificates (e.g. 30d, 12h, 90s; at least 2s); nodes renew at two thirds",
        command=SERVE,
    )
    tls.add_server_flags(serve, env_prefix="SIGNALBOX_CONTROLPLANE", command=SERVE)
    _database_settings(serve, SERVE)
    add(
        serve,
        "--kek",
        env="SIGNALBOX_KEK",
        default=None,
        help="base64 of the 32-byte key-encryption key for the signing key (prefer the env var)",
        command=SERVE,
    )
    add(
        serve,
        "--kek-file",
        env="SIGNALBOX_KEK_FILE",
        default=None,
        help="file holding the KEK; unset with no --kek: generated as <data-dir>/kek (0600)",
        command=SERVE,
    )
    add(
        serve,
        "--snapshot-ttl-days",
        env="SIGNALBOX_SNAPSHOT_TTL_DAYS",
        default=30.0,
        type=float,
        help="how long a snapshot stays valid after it is created",
        command=SERVE,
    )
    add(
        serve,
        "--snapshot-retention",
        env="SIGNALBOX_SNAPSHOT_RETENTION",
        default=100,
        type=int,
        help="newest snapshot versions kept; older ones are pruned unless a node runs them "
        "or they were exported (at least 1)",
        command=SERVE,
    )
    settings.add(
        serve,
        "--evidence-workers",
        env="SIGNALBOX_EVIDENCE_WORKERS",
        default=1,
        type=int,
        help="processes that parse and hash large shipped evidence batches (0: on the event loop)",
        command=SERVE,
    )
    settings.add(
        serve,
        "--max-export-records",
        env="SIGNALBOX_MAX_EXPORT_RECORDS",
        default=1_000_000,
        type=int,
        help="the most records one evidence pack may hold; a larger export is refused",
        command=SERVE,
    )
    settings.add(
        serve,
        "--evidence-stale-after",
        env="SIGNALBOX_EVIDENCE_STALE_AFTER",
        default=600.0,
        type=float,
        help="seconds without a shipped evidence batch after which `admin evidence chains` shows "
        "the chain as stale",
        command=SERVE,
    )
    settings.add(
        serve,
        "--evidence-retention-days",
        env="SIGNALBOX_EVIDENCE_RETENTION_DAYS",
        default=0.0,
        type=float,
        help="hourly, drop evidence partitions whose month ended more than this many days ago, "
        "each chain's pruned range signed first (0: off; `admin evidence prune` works either way)",
        command=SERVE,
    )
    settings.add(
        serve,
        "--limit-burst-seconds",
        env="SIGNALBOX_LIMIT_BURST_SECONDS",
        default=60.0,  # controlplane.quota.DEFAULT_BURST_SECONDS (not imported: --help needs no database stack)
        type=float,
        help="a rate limit's bucket holds this many seconds of the limit: the most a tenant or key "
        "can use at once after being idle (60: a full minute)",
        command=SERVE,
    )
    add_connection_flags(serve, SERVE)
    for flag, env, what in (
        ("--scope-deployment", "SIGNALBOX_SCOPE_DEPLOYMENT", "deployment"),
        ("--scope-site", "SIGNALBOX_SCOPE_SITE", "site"),
    ):
        add(
            serve,
            flag,
            env=env,
            default="",
            help=f"when set, written into the default node group's {what} at start "
            "(lasting: signalbox admin group update default)",
            command=SERVE,
        )
    add(
        serve,
        "--scope-node-group",
        env="SIGNALBOX_SCOPE_NODE_GROUP",
        default="",
        help="removed: one control plane serves every node group (signalbox admin group); "
        "setting it is an error",
        command=SERVE,
    )
    add(
        serve,
        "--drain-seconds",
        env="SIGNALBOX_CONTROLPLANE_DRAIN_SECONDS",
        default=5.0,
        type=float,
        help="on SIGTERM, how long in-flight admin calls may finish",
        command=SERVE,
    )
    add(
        serve,
        "--node-stale-after",
        env="SIGNALBOX_NODE_STALE_AFTER",
        default=60.0,
        type=float,
        help="seconds without a word from a node (nodes send a heartbeat every 15 s) after which "
        "`admin node list` shows it as STALE",
        command=SERVE,
    )
    add(
        serve,
        "--max-message-bytes",
        env="SIGNALBOX_CONTROLPLANE_MAX_MESSAGE_BYTES",
        default=64 * 1024 * 1024,
        type=int,
        help="largest gRPC message sent or received; a snapshot travels as one message",
        command=SERVE,
    )
    settings.add_log_level(serve, command=SERVE)
    serve.set_defaults(handler=serve_command)

    bootstrap = sub.add_parser("bootstrap-admin", help="create a platform_admin token; printed once")
    _database_settings(bootstrap, BOOTSTRAP)
    add(
        bootstrap,
        "--name",
        env="SIGNALBOX_ADMIN_NAME",
        default="admin",
        help="who the token is for (recorded in the audit log)",
        command=BOOTSTRAP,
    )
    bootstrap.set_defaults(handler=bootstrap_command)

    export = sub.add_parser(
        "export-snapshot", help="write a node group's newest signed snapshot envelope to a file"
    )
    _database_settings(export, EXPORT)
    add(
        export,
        "--group",
        env="SIGNALBOX_SNAPSHOT_GROUP",
        default="default",
        help="node group whose snapshot is exported",
        command=EXPORT,
    )
    add(
        export,
        "--out",
        env="SIGNALBOX_SNAPSHOT_OUT",
        default=None,
        help="file to write the envelope to",
        command=EXPORT,
    )
    export.set_defaults(handler=export_command)

    rotate = sub.add_parser("rotate-kek", help="re-seal every signing key under a new KEK (one transaction)")
    _database_settings(rotate, ROTATE_KEK)
    _kek_settings(rotate, ROTATE_KEK, "the current KEK")
    add(
        rotate,
        "--new-kek-file",
        env="SIGNALBOX_NEW_KEK_FILE",
        default=None,
        help="file holding the new KEK; a missing file is generated (random, 0600)",
        command=ROTATE_KEK,
    )
    rotate.set_defaults(handler=rotate_kek_command)

    hash_key = sub.add_parser(
        "export-api-key-hash-key",
        help="write every live version of the API-key hash key (unsealed with the KEK) for an air-gapped node's "
        "--api-key-hash-key-file",
    )
    _database_settings(hash_key, EXPORT_HASH_KEY)
    _kek_settings(hash_key, EXPORT_HASH_KEY, "the KEK")
    add(
        hash_key,
        "--out",
        env="SIGNALBOX_API_KEY_HASH_KEY_OUT",
        default=None,
        help="file to write (must not exist; 0600)",
        command=EXPORT_HASH_KEY,
    )
    hash_key.set_defaults(handler=export_hash_key_command)


MAX_SNAPSHOT_TTL_DAYS = 36_500
"""A century: an expiry any timestamp holds."""


def serve_command(ns: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controlplane.app import ControlPlane, ControlPlaneSettings
    from controlplane.errors import ControlPlaneError
    from controlplane.services.identity import MAX_CERT_TTL, MIN_CERT_TTL
    from signalbox.api.config.v1 import snapshot_pb2

    if ns.log_format not in settings.LOG_FORMATS:
        print(
            f"--log-format: {ns.log_format!r} is not one of {', '.join(settings.LOG_FORMATS)}",
            file=sys.stderr,
        )
        return 2
    settings.configure_logging(ns.log_level, ns.log_format, service="controlplane")
    if not (ns.node_stale_after > 0 and math.isfinite(ns.node_stale_after)):
        print(
            f"--node-stale-after: {ns.node_stale_after} is not a positive number of seconds", file=sys.stderr
        )
        return 2
    problem = connection_flags_problem(ns)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    if not (ns.limit_burst_seconds > 0 and math.isfinite(ns.limit_burst_seconds)):
        print(
            f"--limit-burst-seconds: {ns.limit_burst_seconds} is not a positive number of seconds",
            file=sys.stderr,
        )
        return 2
    if not (ns.evidence_retention_days >= 0 and math.isfinite(ns.evidence_retention_days)):
        print(
            f"--evidence-retention-days: {ns.evidence_retention_days} is not 0 or a positive number of days",
            file=sys.stderr,
        )
        return 2
    if not (ns.evidence_stale_after > 0 and math.isfinite(ns.evidence_stale_after)):
        print(
            f"--evidence-stale-after: {ns.evidence_stale_after} is not a positive number of seconds",
            file=sys.stderr,
        )
        return 2
    if ns.max_message_bytes < 1:
        print(f"--max-message-bytes: {ns.max_message_bytes} is not a positive size", file=sys.stderr)
        return 2
    if not (math.isfinite(ns.snapshot_ttl_days) and 0 < ns.snapshot_ttl_days <= MAX_SNAPSHOT_TTL_DAYS):
        # Zero or less signed every snapshot already expired, which every node not started
        # with --allow-expired refuses; a huge one overflowed the expiry's timestamp.
        print(
            f"--snapshot-ttl-days: {ns.snapshot_ttl_days:g} is not a number of days above 0 and up to "
            f"{MAX_SNAPSHOT_TTL_DAYS}",
            file=sys.stderr,
        )
        return 2
    if ns.scope_node_group:
        print(
            "--scope-node-group: removed; one control plane serves every node group. Create groups "
            "with `signalbox admin group create` and start nodes with --node-group",
            file=sys.stderr,
        )
        return 2
    try:
        node_cert_ttl = timedelta(seconds=settings.parse_duration(ns.node_cert_ttl))
    except ValueError as exc:
        print(f"--node-cert-ttl: {exc}", file=sys.stderr)
        return 2
    if not MIN_CERT_TTL <= node_cert_ttl <= MAX_CERT_TTL:
        print(f"--node-cert-ttl: must be between 2s and {MAX_CERT_TTL.days}d", file=sys.stderr)
        return 2
    if ns.metrics_listen is not None:
        host, sep, port = ns.metrics_listen.rpartition(":")
        if not (sep and host and port.isascii() and port.isdecimal() and int(port) < 65536):
            print(f"--metrics-listen: {ns.metrics_listen!r} is not HOST:PORT", file=sys.stderr)
            return 2
    # Many systems start a process at a soft limit of 1,024 open files: the caps are shares
    # of the hard one (as the node does, dataplane.open_files).
    raise_open_files()
    if ns.insecure:
        logging.getLogger(__name__).warning(
            "--insecure: the node port is PLAINTEXT and node identities are not checked (development only)"
        )
    cp_settings = ControlPlaneSettings(
        listen=ns.listen,
        tls=tls.server_tls(ns),
        node_listen=ns.node_listen,
        metrics_listen=ns.metrics_listen,
        node_advertise_names=tuple(n.strip() for n in ns.node_advertise_name.split(",") if n.strip()),
        node_cert_ttl=node_cert_ttl,
        database_url=ns.database_url or None,
        data_dir=Path(ns.data_dir),
        kek=ns.kek or None,
        kek_file=Path(ns.kek_file) if ns.kek_file else None,
        snapshot_ttl=timedelta(days=ns.snapshot_ttl_days),
        snapshot_retention=ns.snapshot_retention,
        scope=snapshot_pb2.Scope(deployment=ns.scope_deployment, site=ns.scope_site),
        drain_grace=ns.drain_seconds,
        node_stale_after=ns.node_stale_after,
        max_message_bytes=ns.max_message_bytes,
        evidence_workers=ns.evidence_workers,
        max_export_records=ns.max_export_records,
        evidence_stale_after=ns.evidence_stale_after,
        evidence_retention_days=ns.evidence_retention_days,
        limit_burst_seconds=ns.limit_burst_seconds,
        max_connections=ns.max_connections,
        node_max_connections=ns.node_max_connections,
        max_connections_per_peer=ns.max_connections_per_peer,
        node_max_connections_per_peer=ns.node_max_connections_per_peer,
        connection_idle_timeout=ns.connection_idle_timeout,
        connection_max_age=ns.connection_max_age,
        node_connection_max_age=ns.node_connection_max_age,
    )
    if ns.evidence_workers < 0:
        print("--evidence-workers: must be 0 or more", file=sys.stderr)
        return 2
    if ns.max_export_records < 1:
        print("--max-export-records: must be 1 or more", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with ControlPlane(cp_settings) as cp:
            print(
                f"control plane serving on {cp.address}, nodes on {cp.node_address}",
                file=sys.stderr,
                flush=True,
            )
            await stop.wait()
            logging.getLogger(__name__).info("stopping: draining calls and ending sync streams")

    try:
        asyncio.run(run())
    except (ControlPlaneError, OSError, ValueError, SQLAlchemyError) as exc:
        print(f"signalbox controlplane serve: {failure(exc)}", file=sys.stderr)
        return 1
    return 0


def bootstrap_command(ns: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controlplane.db.session import create_engine, session_factory
    from controlplane.errors import ControlPlaneError
    from controlplane.services.admin import AdminService

    async def run() -> str:
        async with database(ns) as url:
            engine = create_engine(url)
            try:
                _, token = await AdminService(session_factory(engine)).create_token(ns.name)
            finally:
                await engine.dispose()
        return token

    try:
        token = asyncio.run(run())
    except (ControlPlaneError, OSError, ValueError, SQLAlchemyError) as exc:
        print(f"signalbox controlplane bootstrap-admin: {failure(exc)}", file=sys.stderr)
        return 1
    print(f"admin token for {ns.name!r} (shown once; store it now):", file=sys.stderr)
    print(token, flush=True)
    return 0


def export_command(ns: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controlplane.db.session import create_engine, session_factory
    from controlplane.repositories import snapshots as snapshot_repo

    if not ns.out:
        print("signalbox controlplane export-snapshot: --out: required", file=sys.stderr)
        return 2

    async def run() -> tuple[int, bytes] | None:
        async with database(ns) as url:
            engine = create_engine(url)
            try:
                async with session_factory(engine)() as session, session.begin():
                    row = await snapshot_repo.latest(session, ns.group)
                    if row is None:
                        return None
                    # A pin lives on outside: retention must keep the version it names.
                    await snapshot_repo.mark_exported(session, row.version, datetime.now(UTC), ns.group)
                    return row.version, bytes(row.envelope)
            finally:
                await engine.dispose()

    try:
        found = asyncio.run(run())
    except (OSError, ValueError, SQLAlchemyError) as exc:
        print(f"signalbox controlplane export-snapshot: {failure(exc)}", file=sys.stderr)
        return 1
    if found is None:
        print(
            f"signalbox controlplane export-snapshot: node group {ns.group!r} has no snapshot "
            "(no such group, or the control plane has not started since it was created)",
            file=sys.stderr,
        )
        return 1
    version, envelope = found
    out = Path(ns.out)
    try:
        # 0600 like every snapshot file: it names tenants, providers and identity hashes.
        atomic_write(out, envelope)
    except OSError as exc:
        print(f"signalbox controlplane export-snapshot: --out {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote snapshot {ns.group} v{version} ({len(envelope)} bytes) to {out}", file=sys.stderr)
    return 0
