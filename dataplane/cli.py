"""``signalbox dataplane``: ``verify`` here; ``serve`` from ``serve_cli``, ``identity``,
``evidence`` and ``sealing-key`` from ``identity_cli``, ``evidence_cli`` and ``sealing_cli``.

Every flag has a ``SIGNALBOX_*`` environment variable (declared through
``signalbox.settings`` so the README lists them all).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from google.protobuf.message import DecodeError

from dataplane import evidence_cli, identity_cli, sealing_cli, serve_cli
from dataplane.config.model import Scope
from dataplane.errors import SnapshotCheckFailed, SnapshotFileInvalid
from dataplane.evidence_cli import ProgressBar
from dataplane.files import read_regular
from dataplane.snapshot.checks import check_envelope
from dataplane.snapshot.envelope import load_trust_keys
from dataplane.snapshot.files import MAX_ENVELOPE_FILE_BYTES
from dataplane.snapshot.lkg import SNAPSHOT_DIR
from dataplane.snapshot.trust import TrustSet, TrustState, walk_chain
from dataplane.trust_cli import add_trust_key, trust_key_paths
from signalbox import settings
from signalbox.api.config.v1 import snapshot_pb2

VERIFY = "dataplane verify"


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], progress: ProgressBar | None = None
) -> None:
    """Add ``signalbox dataplane serve|verify|identity|evidence``; ``progress``: what shows
    the progress of ``evidence export`` (nothing without it)."""
    from dataplane.node_settings import default_node_id

    parser = commands.add_parser("dataplane", help="run or check a data-plane node")
    sub = parser.add_subparsers(dest="dataplane_command", required=True, metavar="COMMAND")

    serve_cli.register(sub, default_node_id())

    verify = sub.add_parser("verify", help="check a signed snapshot file against trust keys")
    add = settings.add
    add(
        verify,
        "--snapshot",
        env="SIGNALBOX_SNAPSHOT_FILE",
        default=None,
        help="the signed snapshot file to check",
        command=VERIFY,
    )
    add_trust_key(verify, VERIFY)
    add(
        verify,
        "--allow-expired",
        env="SIGNALBOX_ALLOW_EXPIRED",
        default=False,
        action="store_true",
        help="do not fail on an expired snapshot",
        command=VERIFY,
    )
    add(
        verify,
        "--deployment",
        env="SIGNALBOX_NODE_DEPLOYMENT",
        default=None,
        help="also check the snapshot is for this deployment",
        command=VERIFY,
    )
    add(
        verify,
        "--data-dir",
        type=settings.directory,
        env="SIGNALBOX_VERIFY_DATA_DIR",
        default=None,
        help="a node's data dir: also trust the signing keys that node learned from signed "
        "statements, and refuse the keys it saw revoked (exactly what that node would accept)",
        command=VERIFY,
    )
    verify.set_defaults(handler=verify_command)

    identity_cli.register(sub, default_node_id())

    evidence_cli.register(sub, progress)
    sealing_cli.register(sub)


def verify_command(ns: argparse.Namespace) -> int:
    """Print version and hash of a valid snapshot file, or why it is not; exit 1 then."""
    if not ns.snapshot:
        print("verify: --snapshot FILE is required", file=sys.stderr)
        return 2
    try:
        operator = load_trust_keys(trust_key_paths(ns))
        if ns.data_dir:
            # The node's learned trust set, replayed from its operator keys exactly as the
            # node does at start (an edited trust file is refused, not believed).
            trust = TrustSet(operator, Path(ns.data_dir) / SNAPSHOT_DIR).state
        else:
            trust = TrustState(operator, frozenset())
        envelope = snapshot_pb2.SignedEnvelope()
        # Bounded and without blocking, as the node reads a pin (a FIFO hung the command).
        envelope.ParseFromString(read_regular(Path(ns.snapshot), MAX_ENVELOPE_FILE_BYTES))
        # As a node would: statements in the pin's trust chain that verify are believed.
        trust = walk_chain(trust, envelope)
        config, key_id = check_envelope(
            envelope,
            trust.keys,
            scope=None if ns.deployment is None else Scope(deployment=ns.deployment),
            now=None if ns.allow_expired else time.time(),
            revoked=trust.revoked,
        )
    except (OSError, ValueError, DecodeError, SnapshotCheckFailed, SnapshotFileInvalid) as exc:
        print(f"INVALID {ns.snapshot}: {exc}")
        return 1

    def when(ts: float | None) -> str:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else "never"

    print(f"OK {ns.snapshot}")
    print(f"version: {config.version}")
    print(f"sha256: {config.hash_hex}")
    print(f"signed-by: {key_id}")
    print(
        f"scope: deployment={config.scope.deployment!r} node_group={config.scope.node_group!r} site={config.scope.site!r}"
    )
    print(f"created: {when(config.created_at)}")
    print(f"expires: {when(config.expires_at)}")
    return 0
