"""``signalbox dataplane evidence verify|export``: checking a node's evidence chains in its
data dir, and exporting them to an Evidence Pack sealed by the node key (an air-gapped site).

Every flag has a ``SIGNALBOX_*`` environment variable (declared through
``signalbox.settings`` so the README lists them all).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import checkpoint, segments
from dataplane.evidence.log import chain_files
from dataplane.evidence.proofs import NodeKey, verify_chain_files
from dataplane.evidence.records import read_records
from dataplane.identity import IdentityFiles, NodeIdentityError
from signalbox import settings

EVIDENCE_VERIFY = "dataplane evidence verify"
EVIDENCE_EXPORT = "dataplane evidence export"

ProgressBar = Callable[[int | None, str], Any]
"""Makes a progress bar (``update(n)``, a context manager) of a total and a label: the
shell's ``records_bar``, handed in since the data plane does not import the shell."""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], progress: ProgressBar | None = None
) -> None:
    """Add ``evidence verify|export``; ``progress``: what shows the progress of ``export``
    (nothing without it)."""
    evidence = sub.add_parser("evidence", help="check a node's evidence chains")
    evidence_sub = evidence.add_subparsers(dest="evidence_command", required=True, metavar="COMMAND")
    evidence_verify = evidence_sub.add_parser(
        "verify", help="verify every chain, checkpoint and consistency in a node's data dir"
    )
    _add_data_dir(evidence_verify, EVIDENCE_VERIFY)
    evidence_verify.set_defaults(handler=evidence_verify_command)
    evidence_export = evidence_sub.add_parser(
        "export",
        help="write every chain of an air-gapped node's data dir to an Evidence Pack sealed by the node key",
    )
    _add_data_dir(evidence_export, EVIDENCE_EXPORT)
    evidence_export.add_argument(
        "--out", required=True, type=Path, metavar="PACK", help="the pack file to write (0600)"
    )
    evidence_export.add_argument(
        "--since-seq",
        type=int,
        default=1,
        metavar="N",
        help="export each chain's records from seq N on (default 1)",
    )
    evidence_export.set_defaults(handler=evidence_export_command, progress=progress)


def _add_data_dir(parser: argparse.ArgumentParser, command: str) -> None:
    settings.add(
        parser,
        "--data-dir",
        type=settings.directory,
        env="SIGNALBOX_NODE_DATA_DIR",
        default="./var/node",
        help="the node's data dir (evidence/ and identity/)",
        command=command,
    )


def evidence_verify_command(ns: argparse.Namespace) -> int:
    """One line per chain: ``OK <chain> records=N checkpoints=K signed=S key=...``, or
    ``BAD <chain file>: <the first bad record or checkpoint>`` and exit 1."""
    data_dir = Path(ns.data_dir)
    files = chain_files(data_dir)
    if not files:
        print(f"verify: no evidence chains in {data_dir / 'evidence'}", file=sys.stderr)
        return 1
    identity = IdentityFiles.under(data_dir)
    bad = 0
    for path in files:
        try:
            key, how = _checkpoint_key(identity, path)
            report = verify_chain_files(path, key)
        except (EvidenceChainBroken, ValueError, OSError) as exc:
            print(f"BAD {path}: {exc}")
            bad += 1
            continue
        # pruned=N: records acknowledged by the control plane and deleted from the node.
        pruned = f" pruned={report.pruned}" if report.pruned else ""
        print(
            f"OK {report.chain_id} records={report.records} checkpoints={report.checkpoints} "
            f"signed={report.signed_size} key={how}{pruned}"
        )
    return 1 if bad else 0


def evidence_export_command(ns: argparse.Namespace) -> int:
    """``exported N records of K chains to PACK``, exit 0; or the reason, exit 1."""
    from dataplane.evidence import node_pack

    bar: Any = ns.progress(None, "export") if ns.progress is not None else contextlib.nullcontext()
    identity = IdentityFiles.under(Path(ns.data_dir))
    try:
        if not identity.key.exists():
            raise NodeIdentityError(f"no node key in {identity.directory}: nothing here can seal a pack")
        key = identity.private_key()
        cert = identity.certificate()
        ca_pem = identity.ca_pem().decode() if cert is not None else ""
        with bar:
            result = node_pack.export(
                Path(ns.data_dir),
                ns.out,
                key=key,
                certificate=cert,
                ca_pem=ca_pem,
                since_seq=ns.since_seq,
                progress=bar.update if ns.progress is not None else None,
            )
    except (node_pack.ExportRefused, NodeIdentityError, EvidenceChainBroken, ValueError) as exc:
        print(f"evidence export: {exc}; nothing was written", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"evidence export: {exc.filename}: {exc.strerror}; nothing was written", file=sys.stderr)
        return 1
    fresh = f" (signed {result.signed_checkpoints} fresh checkpoints)" if result.signed_checkpoints else ""
    print(f"exported {result.records} records of {len(result.chains)} chains to {result.path}{fresh}")
    for s in result.chains:
        print(f"chain {s.chain_id}: seq {s.from_seq}..{s.to_seq} ({s.records} records), head {s.head_seq}")
    for s in result.unmatched:
        print(f"chain {s.chain_id}: nothing exported (no checkpoint covers seq {s.from_seq} or later)")
    return 0


def _checkpoint_key(identity: IdentityFiles, path: Path) -> tuple[NodeKey, str]:
    """The node certificate when it was issued by the node CA for the chain's node, else the
    node's own public key (a node not certified yet: an air-gapped node before provisioning)."""
    cert = identity.certificate()
    if cert is not None:
        ca = x509.load_pem_x509_certificate(identity.ca_pem())
        base = segments.read_base(path)
        first = base.chain_id if base else next((r.get("chain_id", "") for r in read_records(path)), "")
        node_id = checkpoint.node_of(str(first)) if first else ""
        checkpoint.check_certificate(cert, ca, node_id)
        return cert, "certified"
    if not identity.key.exists():
        raise NodeIdentityError(f"no node key in {identity.directory}: checkpoints cannot be verified")
    return identity.private_key().public_key(), "node-key-uncertified"
