"""Verifying an Evidence Pack (format v2 or v1, ``dataplane.evidence.pack``), offline, with
nothing but the trusted keys: ``verify`` walks the pack once, stops at the first problem
(``PackInvalid`` naming the pack's line, and the chain and record seq where there is one)
and returns the ``Report`` of what the pack states. What it checks is listed in
``dataplane.evidence.pack``'s docstring. It imports nothing of the control plane, so
``signalbox evidence verify`` runs with the data-plane install alone.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dataplane.evidence import checkpoint, cosignature, merkle, pack_facts
from dataplane.evidence.fields import read_fields
from dataplane.evidence.pack import (
    KIND_NODE,
    Certificates,
    ChainSection,
    PackInvalid,
    Record,
    Seal,
    Searched,
    certificate_sha256,
    manifest_message,
    node_key_id,
    read_sections,
)
from dataplane.evidence.pruned import PrunedStatement
from dataplane.evidence.records import GENESIS_HASH, hash_of_line

# ---- verifying ----


@dataclass(frozen=True, slots=True)
class Report:
    """What a pack that verified states."""

    kind: str
    pack_id: str
    created: str
    query: dict[str, Any]
    records: int
    chains: list[Searched]
    unmatched: list[Searched]
    """Chains searched (their range) in which nothing matched."""
    alarms: list[dict[str, Any]]
    signed_by: str
    notes: list[str] = field(default_factory=list)
    """What the verification does not vouch for, or vouches for with a caveat (a certificate
    revoked after the checkpoint it verifies): say it next to OK."""
    pruned: dict[str, list[PrunedStatement]] = field(default_factory=dict)
    """Per chain, the signed statements of the records retention pruned, oldest first."""
    revoked: list[tuple[str, str, str]] = field(default_factory=list)
    """``(node_id, certificate SHA-256, RFC 3339 time)`` of each revoked certificate."""
    witnessed: dict[str, int] = field(default_factory=dict)
    """Per chain, when a trusted control-plane key saw its checkpoint (Unix seconds; the
    earliest cosignature, ``dataplane.evidence.cosignature``): its records existed by then."""


@dataclass
class _ChainCheck:
    """One chain section being checked, record by record."""

    section: ChainSection
    line_no: int
    certificates: list[x509.Certificate]
    node_ca: x509.Certificate | None
    node_key: x509.Certificate | ec.EllipticCurvePublicKey | None = None
    """A node pack's key (its certificate, already checked, or its bare public key)."""
    revoked: Mapping[str, datetime] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Where a note on a certificate revoked after the checkpoint goes."""
    trusted: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    """The control plane's keys, whose cosignatures date the checkpoint."""
    witnessed: dict[str, int] = field(default_factory=dict)
    """Where the checkpoint's witness time goes (``Report.witnessed``)."""
    leaves: list[tuple[int, bytes]] = field(default_factory=list)
    seq: int = 0
    hash: str = ""

    def continue_from(self, statements: list[PrunedStatement]) -> None:
        """The chain's records before ``from_seq`` were pruned: the first one links to the last
        pruned record's hash."""
        if statements:
            self.seq, self.hash = statements[-1].last_seq, statements[-1].last_hash.hex()

    def record(self, record: Record) -> None:
        s = self.section.searched
        line = record.line
        where = f"line {record.line_no}: chain {s.chain_id}"
        digest = hash_of_line(line)
        if digest is None:
            raise PackInvalid(f"{where}: not a record line (its last member is not its hash)")
        seq: int
        digest_in: Any
        chain_id: Any
        node_id: Any
        prev: Any
        typed = read_fields(line[:-1] if line.endswith(b"\n") else line)
        if typed is not None:  # the common case, read as ingest reads it
            seq, digest_in, chain_id, node_id, prev = (
                typed.seq,
                typed.hash,
                typed.chain_id,
                typed.node_id,
                typed.prev_hash,
            )
        else:
            try:
                fields = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise PackInvalid(f"{where}: the record is not JSON") from exc
            if not isinstance(fields, dict) or type(fields.get("seq")) is not int:
                raise PackInvalid(f"{where}: the record is not a JSON object with an integer seq")
            seq, digest_in, chain_id, node_id, prev = (
                fields["seq"],
                fields.get("hash"),
                fields.get("chain_id"),
                fields.get("node_id"),
                fields.get("prev_hash"),
            )
        where = f"{where}: record seq {seq}"
        if digest_in != digest:
            raise PackInvalid(f"{where}: hash does not match the record's bytes (edited?)")
        if chain_id != s.chain_id or node_id != s.node_id:
            raise PackInvalid(f"{where}: the record is of chain {str(chain_id)[:100]!r}")
        if not s.from_seq <= seq <= s.to_seq:
            raise PackInvalid(f"{where}: outside the searched range {s.from_seq}..{s.to_seq}")
        if seq <= self.seq:
            raise PackInvalid(f"{where}: comes after seq {self.seq} (records ascend: reordered or repeated?)")
        if seq == self.seq + 1 and prev != (self.hash if self.seq else GENESIS_HASH):
            raise PackInvalid(f"{where}: prev_hash does not link to seq {seq - 1} (inserted or edited?)")
        self.seq, self.hash = seq, digest
        self.leaves.append((seq - 1, merkle.leaf_hash(bytes.fromhex(digest))))

    def finish(self) -> None:
        s = self.section.searched
        where = f"line {self.line_no}: chain {s.chain_id}"
        if s.to_seq == 0:
            if s.records:
                raise PackInvalid(f"{where}: records without a checkpoint")
            return
        note = self.section.checkpoint.encode()
        cp, problems = None, []
        if self.node_key is not None:
            if s.records != s.to_seq - s.from_seq + 1:
                raise PackInvalid(
                    f"{where}: holds {s.records} records, a node pack holds every one of {s.from_seq}..{s.to_seq}"
                )
            try:
                cp = checkpoint.verify(note, self.node_key)
                if cp.node_id != s.node_id:
                    raise checkpoint.CheckpointInvalid(f"checkpoint of node {cp.node_id!r}")
            except checkpoint.CheckpointInvalid as exc:
                cp = None
                problems.append(f"the node's key: {exc}")
        verified: list[tuple[int, x509.Certificate]] = []
        for n, cert in enumerate(self.certificates if self.node_ca is not None else [], start=1):
            assert self.node_ca is not None
            try:
                cp = checkpoint.verify_with_ca(note, cert, self.node_ca, s.node_id)
                verified.append((n, cert))
            except checkpoint.CheckpointInvalid as exc:
                problems.append(f"certificate {n}: {exc}")
        if cp is None:
            why = "; ".join(problems) or f"the pack has no certificate of node {s.node_id!r}"
            raise PackInvalid(
                f"{where}: the checkpoint does not verify with a certificate of its node ({why})"
            )
        witnessed = None
        if verified:
            try:
                seen = cosignature.witnesses(note, self.trusted)
            except cosignature.CosignatureInvalid as exc:
                raise PackInvalid(f"{where}: the checkpoint's {exc}") from exc
            if seen:
                witnessed = self.witnessed[s.chain_id] = min(w.time for w in seen)
            else:
                self.notes.append(
                    f"chain {s.chain_id}: its checkpoint of size {cp.size} carries no cosignature by a "
                    "trusted control-plane key: its time is the node's own claim"
                )
            note_text = pack_facts.revocation_note(cp, verified, self.revoked, s.chain_id, where, witnessed)
            if note_text is not None:
                self.notes.append(note_text)
        if cp.chain_id != s.chain_id:
            raise PackInvalid(f"{where}: the checkpoint is of chain {cp.chain_id!r}")
        if cp.size != s.to_seq:
            raise PackInvalid(
                f"{where}: the checkpoint is of size {cp.size}, the searched range ends at {s.to_seq}"
            )
        try:
            proof = [bytes.fromhex(h) for h in self.section.proof]
            root = merkle.root_from_multiproof(self.leaves, cp.size, proof)
        except (ValueError, merkle.ProofError) as exc:
            raise PackInvalid(f"{where}: the multiproof does not verify: {exc}") from exc
        if root != cp.root:
            raise PackInvalid(
                f"{where}: the records and the multiproof make root {root.hex()[:16]}…, the signed checkpoint "
                f"of size {cp.size} has {cp.root.hex()[:16]}… (a record missing, added or changed)"
            )


def _load_certificates(
    certs: Certificates, line_no: int
) -> tuple[x509.Certificate, dict[str, list[x509.Certificate]]]:
    try:
        ca = x509.load_pem_x509_certificate(certs.node_ca.encode())
    except ValueError as exc:
        raise PackInvalid(f"line {line_no}: the node CA is not a PEM certificate") from exc
    nodes: dict[str, list[x509.Certificate]] = {}
    for node_id, pems in certs.nodes.items():
        loaded = nodes.setdefault(node_id, [])
        for n, pem in enumerate(pems, start=1):
            where = f"line {line_no}: certificate {n} of node {node_id[:100]!r}"
            try:
                cert = x509.load_pem_x509_certificate(pem.encode())
            except ValueError as exc:
                raise PackInvalid(f"{where}: not a PEM certificate") from exc
            try:
                checkpoint.check_certificate(cert, ca, node_id)
            except checkpoint.CheckpointInvalid as exc:
                raise PackInvalid(f"{where}: {exc}") from exc
            loaded.append(cert)
    return ca, nodes


@dataclass(frozen=True, slots=True)
class _NodeEntry:
    node_id: str
    key: x509.Certificate | ec.EllipticCurvePublicKey
    ca_sha256: str
    notes: list[str]


def _load_node_entry(
    certs: Certificates, line_no: int, *, require_certificate: bool, node_ca: x509.Certificate | None
) -> _NodeEntry:
    """A node pack's certificates section: one node, its certificate (issued by the pack's
    node CA, and by ``node_ca`` when given) or its bare public key."""
    where = f"line {line_no}"
    if len(certs.nodes) != 1 or len(next(iter(certs.nodes.values()))) != 1:
        raise PackInvalid(f"{where}: a node pack holds exactly one node with one certificate or public key")
    node_id, [pem] = next(iter(certs.nodes.items()))
    where = f"{where}: node {node_id[:100]!r}"
    notes: list[str] = []
    if "CERTIFICATE" not in pem:
        if require_certificate or node_ca is not None:
            raise PackInvalid(
                f"{where}: the pack carries a bare public key, no certificate (the node was not "
                "provisioned): nothing vouches for the key"
            )
        try:
            public = serialization.load_pem_public_key(pem.encode())
        except ValueError as exc:
            raise PackInvalid(f"{where}: neither a PEM certificate nor a PEM public key") from exc
        except UnsupportedAlgorithm as exc:
            raise PackInvalid(f"{where}: the public key is not an ECDSA key") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PackInvalid(f"{where}: the public key is not an ECDSA key")
        if certs.node_ca:
            raise PackInvalid(f"{where}: a node CA without a node certificate")
        notes.append("sealed by the node's bare public key: intact, but no certificate vouches for the key")
        return _NodeEntry(node_id, public, "", notes)
    if not certs.node_ca:
        raise PackInvalid(f"{where}: a node certificate needs the node CA in the certificates section")
    ca, loaded = _load_certificates(certs, line_no)
    cert = loaded[node_id][0]
    if node_ca is not None:
        try:
            checkpoint.check_certificate(cert, node_ca, node_id)
        except checkpoint.CheckpointInvalid as exc:
            raise PackInvalid(f"{where}: --node-ca: {exc}") from exc
    else:
        notes.append(
            "the node CA in the pack is not vouched for by any trust key (give --node-ca CA.pem to check "
            "the node certificate against the node CA you trust)"
        )
    del ca
    return _NodeEntry(node_id, cert, certificate_sha256(certs.node_ca), notes)


def _check_node_seal(seal: Seal, line_no: int, key: x509.Certificate | ec.EllipticCurvePublicKey) -> str:
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise PackInvalid(f"line {line_no}: the node key is not an ECDSA key")
    if len(seal.signatures) != 1:
        raise PackInvalid(f"line {line_no}: a node pack's seal has exactly one signature, the node's")
    signature = seal.signatures[0]
    keyid, sig = str(signature.get("keyid", ""))[:64], str(signature.get("sig", ""))
    if keyid != node_key_id(public):
        raise PackInvalid(f"line {line_no}: the seal is signed by key {keyid!r}, not the node's")
    try:
        raw = base64.b64decode(sig, validate=True)
        if base64.b64encode(raw).decode() != sig:
            raise ValueError("not canonical base64")
        public.verify(raw, manifest_message(seal.manifest), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise PackInvalid(
            f"line {line_no}: the seal's signature by the node key {keyid} does not verify"
        ) from exc
    return f"node key {keyid}"


def _check_seal(seal: Seal, line_no: int, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    if not trusted:
        raise PackInvalid("no trust key given: the seal cannot be checked")
    if not seal.signatures:
        raise PackInvalid(f"line {line_no}: the seal is unsigned")
    message = manifest_message(seal.manifest)
    for signature in seal.signatures:
        keyid = str(signature.get("keyid", ""))[:64]
        key = trusted.get(keyid)
        if key is None:
            # A pack is signed by the active key alone: a signature nobody can check is
            # refused rather than ignored, so no byte of the seal goes unchecked.
            raise PackInvalid(f"line {line_no}: the seal is signed by key {keyid!r}, which is not trusted")
        sig = str(signature.get("sig", ""))
        try:
            raw = base64.b64decode(sig, validate=True)
            if base64.b64encode(raw).decode() != sig:
                # Base64 has spare bits in its last character: only the one spelling counts.
                raise ValueError("not canonical base64")
            key.verify(raw, message)
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise PackInvalid(f"line {line_no}: the seal's signature by key {keyid} does not verify") from exc
    return ",".join(str(s["keyid"]) for s in seal.signatures)


def verify(
    path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    progress: Callable[[int], None] | None = None,
    node_ca: x509.Certificate | None = None,
) -> Report:
    """Check the pack at ``path`` completely (see the module docstring) with the control
    plane's public keys ``trusted`` (by key id, as ``envelope.load_trust_keys`` reads them);
    ``PackInvalid`` names the first problem. ``progress`` gets the records checked since its
    last call.

    A node's own pack (kind ``node``) is sealed by the node key in its certificates section:
    with ``trusted`` keys given it must carry a certificate (not a bare key), and with
    ``node_ca`` that certificate must be issued by it; ``Report.notes`` says what the
    verification does not vouch for (the pack's node CA, unless ``node_ca`` is given)."""
    content = hashlib.sha256()
    sections: list[Searched] = []
    kind, ca_sha256 = "", ""
    ca: x509.Certificate | None = None
    node: _NodeEntry | None = None
    certs: dict[str, list[x509.Certificate]] = {}
    revoked: dict[str, datetime] = {}
    pruned: dict[str, list[PrunedStatement]] = {}
    notes: list[str] = []
    witnessed: dict[str, int] = {}
    current: _ChainCheck | None = None
    done = 0
    with open(path, "rb") as f:
        for section, line_no, value in read_sections(f, content=content):
            if section == "record":
                assert current is not None
                current.record(value)
                done += 1
                if progress is not None and done % 1000 == 0:
                    progress(1000)
                continue
            if current is not None:
                current.finish()
                current = None
            if section == "header":
                kind = value
            elif section == "certificates" and kind == KIND_NODE:
                node = _load_node_entry(value, line_no, require_certificate=bool(trusted), node_ca=node_ca)
                ca_sha256 = node.ca_sha256
            elif section == "certificates":
                ca, certs = _load_certificates(value, line_no)
                ca_sha256 = certificate_sha256(value.node_ca)
                revoked = pack_facts.revocations(value, certs, line_no)
                if value.revoked is None:
                    notes.append("a version 1 pack: it states no certificate revocations")
            elif section == "pruned":
                pruned = pack_facts.pruned_statements(value, trusted, line_no)
            elif section == "chain":
                s = value.searched
                if any(seen.chain_id == s.chain_id for seen in sections):
                    raise PackInvalid(f"line {line_no}: chain {s.chain_id} appears twice")
                if checkpoint.node_of(s.chain_id) != s.node_id:
                    raise PackInvalid(f"line {line_no}: chain {s.chain_id} is not of node {s.node_id!r}")
                sections.append(s)
                if node is not None:
                    if s.node_id != node.node_id:
                        raise PackInvalid(f"line {line_no}: chain {s.chain_id} is not of the pack's node")
                    current = _ChainCheck(value, line_no, [], None, node.key)
                else:
                    pack_facts.check_searched_range(
                        s, pruned.get(s.chain_id, []), f"line {line_no}: chain {s.chain_id}"
                    )
                    current = _ChainCheck(
                        value,
                        line_no,
                        certs.get(s.node_id, []),
                        ca,
                        revoked=revoked,
                        notes=notes,
                        trusted=trusted,
                        witnessed=witnessed,
                    )
                    current.continue_from(pruned.get(s.chain_id, []))
            elif section == "seal":
                if progress is not None and done % 1000:
                    progress(done % 1000)
                if node is not None:
                    signed_by = _check_node_seal(value, line_no, node.key)
                else:
                    signed_by = _check_seal(value, line_no, trusted)
                report = _check_manifest(
                    value, line_no, signed_by, kind, content.hexdigest(), ca_sha256, sections
                )
                if node is not None:
                    return dataclasses.replace(report, notes=node.notes)
                report = dataclasses.replace(report, witnessed=witnessed)
                return _control_plane_facts(report, line_no, pruned, revoked, certs, notes)
    raise PackInvalid("the pack ends without a seal")  # read_sections raises first


def _control_plane_facts(
    report: Report,
    line_no: int,
    pruned: dict[str, list[PrunedStatement]],
    revoked: dict[str, datetime],
    certs: dict[str, list[x509.Certificate]],
    notes: list[str],
) -> Report:
    """The report with what a control-plane pack states beyond its records, once the chains
    searched without a match are shown to start after their pruned range too."""
    where = f"line {line_no}: the manifest"
    for u in report.unmatched:
        pack_facts.check_searched_range(u, pruned.get(u.chain_id, []), f"{where}: chain {u.chain_id}")
    listed = {s.chain_id for s in [*report.chains, *report.unmatched]}
    for chain_id in pruned:
        if chain_id not in listed:
            raise PackInvalid(
                f"{where}: a pruned-range statement of chain {chain_id[:100]}, which it does not list"
            )
    named = [
        (node_id, sha256, pack_facts.rfc3339(revoked[sha256]))
        for node_id, loaded in sorted(certs.items())
        for sha256 in (pack_facts.fingerprint(cert) for cert in loaded)
        if sha256 in revoked
    ]
    return dataclasses.replace(report, notes=notes, pruned=pruned, revoked=named)


def _check_manifest(
    seal: Seal,
    line_no: int,
    signed_by: str,
    kind: str,
    content_sha256: str,
    ca_sha256: str,
    sections: list[Searched],
) -> Report:
    m = seal.manifest
    where = f"line {line_no}: the manifest"
    if m.get("content_sha256") != content_sha256:
        raise PackInvalid(f"{where}: content_sha256 is not the SHA-256 of the pack before the seal (edited?)")
    if m.get("kind") != kind:
        raise PackInvalid(f"{where}: kind {str(m.get('kind'))[:40]!r} is not the header's {kind!r}")
    if m.get("node_ca_sha256") != ca_sha256:
        raise PackInvalid(f"{where}: names another node CA than the certificates section's (swapped?)")
    chains = [Searched.from_json(c, f"{where}: chains") for c in _list(m, "chains", where)]
    unmatched = [
        Searched.from_json(c, f"{where}: searched_without_match")
        for c in _list(m, "searched_without_match", where)
    ]
    if chains != sections:
        listed = {c.chain_id: c for c in chains}
        for s in sections:
            if listed.get(s.chain_id) != s:
                raise PackInvalid(f"{where}: chain {s.chain_id}: its range or count differs from its section")
        raise PackInvalid(f"{where}: lists chains that have no section in the pack")
    total = sum(s.records for s in sections)
    if m.get("records") != total:
        raise PackInvalid(f"{where}: says {str(m.get('records'))[:20]} records, the chains hold {total}")
    if any(u.records for u in unmatched):
        raise PackInvalid(f"{where}: a chain searched without a match has records")
    query = m.get("query")
    if not isinstance(query, dict):
        raise PackInvalid(f"{where}: query must be an object")
    return Report(
        kind=kind,
        pack_id=str(m.get("pack_id", "")),
        created=str(m.get("created", "")),
        query=query,
        records=total,
        chains=chains,
        unmatched=unmatched,
        alarms=[a for a in _list(m, "alarms", where) if isinstance(a, dict)],
        signed_by=signed_by,
    )


def _list(manifest: dict[str, Any], key: str, where: str) -> list[Any]:
    value = manifest.get(key)
    if not isinstance(value, list):
        raise PackInvalid(f"{where}: {key} must be a list")
    return value
