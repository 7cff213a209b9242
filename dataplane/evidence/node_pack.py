"""A node's own Evidence Pack (``kind: node``): what an air-gapped node hands over, on a
disk, in place of shipping (``signalbox dataplane evidence export``).

The format is the pack's (``dataplane.evidence.pack``, docs/evidence-format.md) with:

- the certificates section: ``node_ca`` is the node CA of ``identity/ca.pem`` ("" when the
  node was never provisioned) and ``nodes`` holds one entry for the node, its certificate
  ``identity/node.crt`` or, unprovisioned, its bare public key (``PUBLIC KEY`` PEM);
- per chain, every record from ``from_seq`` (1, or ``--since-seq``) to ``to_seq``, the size
  of the chain's newest checkpoint: the export first signs a fresh checkpoint of every
  record on disk when the node key is there and the newest one does not cover them all
  (export refuses while the node runs: it holds every chain's writer lock); a chain with no checkpoint is listed in ``searched_without_match``;
- the seal: one ECDSA P-256 (SHA-256, DER) signature by the node key over the same DSSE
  PAE of the canonical manifest, ``keyid`` the first 16 hex digits of SHA-256 over the
  key's DER SubjectPublicKeyInfo (``pack.node_key_id``); the manifest's ``query`` is
  ``{"since_seq": N}`` and ``node_ca_sha256`` is "" for an unprovisioned node.

A node that never ships never prunes, so every chain has all its leaves; a pruned chain is
refused (its early records are with the control plane, which exports them itself).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import checkpoint, log, merkle, pack, proofs, segments
from dataplane.evidence.writer_lock import ChainBusy, WriterLock


class ExportRefused(ValueError):
    """The data dir cannot be exported; the message says why (naming the chain or file)."""


def sign_node(key: ec.EllipticCurvePrivateKey, manifest: dict[str, Any]) -> dict[str, str]:
    signature = key.sign(pack.manifest_message(manifest), ec.ECDSA(hashes.SHA256()))
    return {"keyid": pack.node_key_id(key.public_key()), "sig": base64.b64encode(signature).decode()}


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    records: int
    chains: list[pack.Searched]
    unmatched: list[pack.Searched]
    signed_checkpoints: int


@dataclass(slots=True)
class _Plan:
    chain: proofs.Chain
    searched: pack.Searched
    note: bytes


def _read_chain(log_file: Path) -> proofs.Chain:
    chain = proofs.Chain.read(log_file)
    if chain.base is not None:
        raise ExportRefused(
            f"{log_file.name}: records up to seq {chain.base.seq} were pruned (acknowledged by a control "
            "plane); export them from the control plane's store"
        )
    if not chain.records:
        raise ExportRefused(f"{log_file.name}: a chain without records")
    return chain


def _plan_chain(
    log_file: Path, chain: proofs.Chain, node_id: str, since_seq: int, key: ec.EllipticCurvePrivateKey
) -> tuple[_Plan, bool]:
    chain_id = str(chain.records[0].get("chain_id", ""))
    if checkpoint.node_of(chain_id) != node_id:
        raise ExportRefused(f"{log_file.name}: chain {chain_id[:100]!r} is not of node {node_id!r}")
    head = len(chain.records)
    signed = False
    size = checkpoint.parse(chain.notes[-1]).size if chain.notes else 0
    if size < head:
        # Every record read is on disk once its segment is fsynced: only then is it signed for.
        for segment in segments.all_segments(log_file):
            _fsync(segment.path)
        tree = merkle.Tree()
        for leaf in chain.leaves():
            tree.append_hashed(leaf)
        log._sign_and_store(key, checkpoint.checkpoints_path(log_file), chain_id, head, tree.root())
        chain = proofs.Chain.read(log_file)
        size, signed = head, True
    note = chain.notes[-1] if chain.notes else b""
    from_seq = min(since_seq, size + 1) if size else 1
    records = max(0, size - from_seq + 1)
    searched = pack.Searched(chain_id, node_id, from_seq if records else 1, size, records, head, "ok", "")
    return _Plan(chain, searched, note), signed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export(
    data_dir: Path,
    out: Path,
    *,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate | None = None,
    ca_pem: str = "",
    since_seq: int = 1,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the node pack of every chain in ``data_dir`` to ``out`` (0600, temp + rename);
    the node is the one whose chains these are (every chain must be of one node), ``key``
    its key, ``certificate`` and ``ca_pem`` its certificate and node CA once provisioned.

    Refused while a process writes any of the chains (a running node holds their writer
    locks): export signs a fresh checkpoint, and two signers of one chain would interleave
    their checkpoints. The locks are held until the pack is written, so a node started
    meanwhile refuses to start instead."""
    with _writer_locks(Path(data_dir)):
        if since_seq < 1:
            raise ExportRefused(f"--since-seq: {since_seq} is not a seq (1 or more)")
        chains = [(f, _read_chain(f)) for f in log.chain_files(Path(data_dir))]
        if not chains:
            raise ExportRefused(f"no evidence chains in {Path(data_dir) / 'evidence'}")
        for log_file, _ in chains:
            # Before anything is signed: the fresh checkpoint below is taken over the records'
            # claimed hashes, so over a chain edited, reordered or cut in the middle it would be
            # the node's signature on a tree that is not its chain (kept in its checkpoints file
            # for good), and the pack would not verify anyway.
            try:
                proofs.verify_chain_files(log_file, key.public_key())
            except EvidenceChainBroken as exc:
                raise ExportRefused(f"{log_file.name} does not verify: {exc}") from exc
        node_id = checkpoint.node_of(str(chains[0][1].records[0].get("chain_id", "")))
        cert = certificate
        if cert is not None:
            if cert.public_key() != key.public_key():
                raise ExportRefused("the node certificate is not of the node key")
            try:
                checkpoint.check_certificate(cert, x509.load_pem_x509_certificate(ca_pem.encode()), node_id)
            except (ValueError, checkpoint.CheckpointInvalid) as exc:
                raise ExportRefused(f"the node certificate: {exc}") from exc
            node_entry = cert.public_bytes(serialization.Encoding.PEM).decode()
        else:
            ca_pem = ""
            node_entry = (
                key.public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                .decode()
            )
        plans, fresh = [], 0
        for log_file, chain in chains:
            plan, signed = _plan_chain(log_file, chain, node_id, since_seq, key)
            plans.append(plan)
            fresh += signed
        exported = [p for p in plans if p.searched.records]
        unmatched = [p.searched for p in plans if not p.searched.records]
        manifest: dict[str, Any] = {
            "pack_id": secrets.token_hex(16),
            "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "kind": pack.KIND_NODE,
            "query": {"since_seq": since_seq},
            "records": sum(p.searched.records for p in exported),
            "node_ca_sha256": pack.certificate_sha256(ca_pem) if ca_pem else "",
            "chains": [p.searched.to_json() for p in exported],
            "searched_without_match": [s.to_json() for s in unmatched],
            "alarms": [],
        }
        out = Path(out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                writer = pack.PackWriter(f)
                writer.header(pack.KIND_NODE)
                writer.certificates(ca_pem, {node_id: [node_entry]})
                for p in exported:
                    _write_chain(writer, p, progress)
                writer.seal(manifest, lambda m: [sign_node(key, m)])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync(out.parent)
        return ExportResult(out, manifest["records"], [p.searched for p in exported], unmatched, fresh)


@contextlib.contextmanager
def _writer_locks(data_dir: Path) -> Iterator[None]:
    """Every chain's writer lock, held for the block; ``ExportRefused`` when one is busy."""
    with contextlib.ExitStack() as held:
        for chain_file in log.chain_files(data_dir):
            try:
                held.enter_context(WriterLock(chain_file))
            except ChainBusy as exc:
                raise ExportRefused(f"{exc}: the node is running; stop it, then export") from exc
        yield


def _write_chain(writer: pack.PackWriter, plan: _Plan, progress: Callable[[int], None] | None) -> None:
    s = plan.searched
    selected = list(range(s.from_seq - 1, s.to_seq))
    builder = merkle.MultiproofBuilder(merkle.multiproof_ranges(selected, s.to_seq))
    for leaf in plan.chain.leaves(s.to_seq):
        builder.add(leaf)
    proof = [h.hex() for h in builder.finish()]
    writer.chain(pack.ChainSection(s, plan.note.decode(), proof))
    for n, line in enumerate(plan.chain.lines[s.from_seq - 1 : s.to_seq], start=1):
        writer.record(line)
        if progress is not None and n % 1000 == 0:
            progress(1000)
    if progress is not None and s.records % 1000:
        progress(s.records % 1000)
