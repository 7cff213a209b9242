"""Importing an air-gapped node's own Evidence Pack (``signalbox admin evidence import``).

The node never shipped, so its pack (``dataplane.evidence.node_pack``, kind ``node``) takes
the place of its Ship stream, with the same checks:

1. the pack verifies as a whole (``dataplane.evidence.pack_verify.verify``: seal by the node key,
   every record's hash and link, each checkpoint and multiproof), so a changed byte refuses
   it, naming the record, before anything of it is stored;
2. the node key that sealed it must be the key of a certificate this control plane issued to
   that node and has not revoked (``node_certificates``): the certificate in the pack is only
   a hint, and a bare key (an unprovisioned node) or a revoked node's pack is refused;
3. each chain's records go through ``EvidenceIngest`` (the one way into the store) in
   batches, the chain's checkpoint note with its last batch, the note's signature checked
   with that certificate's key: duplicates are counted, not stored again; a gap or a changed
   record raises the alarms shipping would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.errors import InvalidArgument, PermissionDenied, shown
from controlplane.evidence.errors import EvidenceRefused
from controlplane.evidence.ingest import Batch, EvidenceIngest
from dataplane.evidence import pack, pack_verify

BATCH_RECORDS = 5000
MAX_IMPORT_BYTES = 4 * 1024 * 1024 * 1024
"""The largest pack an import takes (a 1,000,000-record pack is about 1.5 GiB)."""


@dataclass(slots=True)
class ImportedChain:
    chain_id: str
    stored: int = 0
    duplicates: int = 0
    head_seq: int = 0
    checkpoints: int = 0
    error: str = ""
    error_seq: int = 0


@dataclass(slots=True)
class ImportResult:
    pack_id: str
    node_id: str
    chains: list[ImportedChain] = field(default_factory=list)


def _node_entry(path: Path) -> tuple[str, ec.EllipticCurvePublicKey]:
    """The node and the key of a node pack that verified (``pack_verify.verify`` checked both)."""
    with open(path, "rb") as f:
        for section, _, value in pack.read_sections(f):
            if section == "certificates":
                node_id, [pem] = next(iter(value.nodes.items()))
                loaded = (
                    x509.load_pem_x509_certificate(pem.encode()).public_key()
                    if "CERTIFICATE" in pem
                    else load_pem_public_key(pem.encode())
                )
                assert isinstance(loaded, ec.EllipticCurvePublicKey)  # verify refuses others
                return node_id, loaded
    raise pack.PackInvalid("the pack has no certificates section")  # read_sections raises first


def _kind(path: Path) -> str:
    with open(path, "rb") as f:
        _, _, kind = next(pack.read_sections(f))
        return str(kind)


def _der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _batches(path: Path) -> Iterator[tuple[str, list[bytes], list[str], bool]]:
    """Per chain, its records in batches: ``(chain_id, lines, notes, last)``; the chain's
    checkpoint note comes with its last batch (ingest stores it once its records are)."""
    with open(path, "rb") as f:
        section: pack.ChainSection | None = None
        lines: list[bytes] = []
        left = 0
        for kind, _, value in pack.read_sections(f):
            if kind == "chain":
                section, lines, left = value, [], value.searched.records
            elif kind == "record":
                assert section is not None
                lines.append(value.line)
                left -= 1
                if left == 0:
                    yield section.searched.chain_id, lines, [section.checkpoint], True
                    lines = []
                elif len(lines) >= BATCH_RECORDS:
                    yield section.searched.chain_id, lines, [], False
                    lines = []


class EvidenceImporter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], ingest: EvidenceIngest) -> None:
        self._sessions = sessions
        self._ingest = ingest

    async def import_pack(self, path: Path) -> ImportResult:
        """Import the node pack at ``path`` (see the module docstring)."""
        try:
            kind = await asyncio.to_thread(_kind, path)
            if kind != pack.KIND_NODE:
                raise pack.PackInvalid(
                    f"line 1: kind {kind!r}: only a node's own pack (kind node) is imported; a control "
                    "plane's pack holds records already stored"
                )
            report = await asyncio.to_thread(pack_verify.verify, path, {})
        except pack.PackInvalid as exc:
            raise InvalidArgument("pack", str(exc)) from exc
        node_id, key = await asyncio.to_thread(_node_entry, path)
        public_key = await self._issued_key(node_id, key)
        result = ImportResult(report.pack_id, node_id)
        chains: dict[str, ImportedChain] = {}
        batches = _batches(path)
        # Read off the event loop, one batch at a time: a large pack is never held whole.
        while (item := await asyncio.to_thread(next, batches, None)) is not None:
            chain_id, lines, notes, _ = item
            chain = chains.get(chain_id)
            if chain is None:
                chain = chains[chain_id] = ImportedChain(chain_id)
                result.chains.append(chain)
            if chain.error:
                continue  # refused from some record on: nothing after it is fed
            try:
                ack = await self._ingest.ingest(node_id, Batch(chain_id, lines, notes), public_key)
            except EvidenceRefused as exc:
                chain.error, chain.error_seq = exc.message, exc.seq
                continue
            chain.stored += ack.stored
            chain.duplicates += ack.duplicates
            chain.head_seq = ack.head_seq
            chain.checkpoints += ack.checkpoints
            if ack.refused is not None:
                chain.error, chain.error_seq = ack.refused.message, ack.refused.seq
        return result

    async def _issued_key(self, node_id: str, key: ec.EllipticCurvePublicKey) -> bytes:
        """``key``'s DER when a certificate this control plane issued to ``node_id`` and did not
        revoke certifies it; ``PermissionDenied`` otherwise."""
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    sa.text(
                        "SELECT certificate_pem, revoked_at IS NOT NULL FROM node_certificates "
                        "WHERE node_id = :n AND certificate_pem <> ''"
                    ),
                    {"n": node_id},
                )
            ).all()
        wanted, revoked = _der(key), False
        for pem, is_revoked in rows:
            cert = x509.load_pem_x509_certificate(pem.encode())
            if cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == wanted:
                if not is_revoked:
                    return wanted
                revoked = True
        if revoked:
            raise PermissionDenied(
                f"node {shown(node_id)}: the certificate of the key that sealed the pack is revoked"
            )
        raise PermissionDenied(
            f"node {shown(node_id)}: the pack is sealed by a key no certificate this control plane issued "
            "certifies (provision the node: `dataplane identity request`, `admin node certify`)"
        )
