"""Evidence Packs (format v1): one file that proves which stored records matched a query and
that none was left out, checked offline with nothing but the control plane's public key.

The format is documented in docs/evidence-format.md ("Evidence Packs"); in short, UTF-8
lines, each ending in ``\\n``:

1. header ``{"format":"signalbox-evidence-pack","version":1,"kind":"control-plane"}``
   (``kind`` ``node``: a node's own export, ``dataplane.evidence.node_pack``);
2. ``{"section":"certificates","node_ca":PEM,"nodes":{node_id:[PEM,...]}}``;
3. per chain ``{"section":"chain",...}`` followed by exactly ``records`` raw record lines,
   byte for byte as the node wrote them, in seq order;
4. ``{"section":"seal","manifest":{...},"signatures":[{"keyid":..,"sig":..}]}``, the last
   line, canonical JSON (so no byte of it can change without the signature failing).

Building a pack is the control plane's (``controlplane.evidence.export``) through
``PackWriter``; this module is the format, the reader (``read_sections``, for ``show``) and
the verifier (``verify``). It imports nothing of the control plane, so ``signalbox evidence
verify`` runs with the data-plane install alone.

What ``verify`` checks, stopping at the first problem (``PackInvalid`` names the line of
the pack, and the chain and record seq where there is one):

- the structure: header, certificates, chain sections each followed by their records, the
  seal last, nothing after it, every line bounded;
- every node certificate is issued by the pack's node CA for its node, and the node CA is
  the one the signed manifest names (SHA-256 of its DER);
- per chain: its checkpoint is signed by a certificate of its node and is of size
  ``to_seq``; every record's hash is over its own bytes (``log.hash_of_line``), its
  ``chain_id`` and ``node_id`` are the chain's, its seq is within ``[from_seq, to_seq]``
  and above the previous one, and consecutive seqs link (``prev_hash``); the multiproof
  and the records make the checkpoint's root (``merkle.root_from_multiproof``);
- the seal: signed (DSSE PAE over the canonical manifest) by a trusted key with every
  signature verifying, ``content_sha256`` is the SHA-256 of every byte before the seal
  line, and the manifest's chains, ranges and counts are those of the sections.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.evidence import checkpoint, merkle
from dataplane.evidence.log import GENESIS_HASH, hash_of_line

FORMAT = "signalbox-evidence-pack"
VERSION = 1
KIND_CONTROL_PLANE = "control-plane"
KIND_NODE = "node"
"""A node's own export (``dataplane.evidence.node_pack``); its seal is the node's ECDSA signature and its key (a
certificate or a bare public key) is in the certificates section."""
KINDS = (KIND_CONTROL_PLANE, KIND_NODE)
PAYLOAD_TYPE = "application/vnd.signalbox.evidence-pack.v1+json"
"""DSSE payload type of the seal: a signature over a pack can never pass for a snapshot's."""
MAX_RECORD_BYTES = 1024 * 1024
"""A record line longer than this is refused unread (ingest stores at most 64 KiB)."""
MAX_SECTION_BYTES = 256 * 1024 * 1024
"""A section line (certificates, a chain with its proof, the seal) longer than this is refused."""
TAIL_BYTES = 64 * 1024 * 1024
"""How far back ``record_count_hint`` looks for the seal line."""


class PackInvalid(ValueError):
    """A pack that is not well formed or does not verify; the message says where and why."""


def canonical(value: Any) -> bytes:
    """Canonical JSON: keys sorted, no whitespace, UTF-8 (as records are written)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def header_line(kind: str = KIND_CONTROL_PLANE) -> bytes:
    # Fixed member order (not sorted): the first thing a person reading the file sees is what it is.
    return b'{"format":"%b","version":%d,"kind":"%b"}\n' % (FORMAT.encode(), VERSION, kind.encode())


def certificates_line(node_ca_pem: str, nodes: Mapping[str, list[str]]) -> bytes:
    return canonical({"section": "certificates", "node_ca": node_ca_pem, "nodes": dict(nodes)}) + b"\n"


def seal_line(manifest: Mapping[str, Any], signatures: list[dict[str, str]]) -> bytes:
    return canonical({"section": "seal", "manifest": dict(manifest), "signatures": signatures}) + b"\n"


# The snapshot envelopes' DSSE PAE and key ids (``dataplane.snapshot.envelope``; the layers
# keep evidence and snapshot apart, and tests hold the two equal), so the same --trust-key
# PEM checks a snapshot and a pack.


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    type_bytes = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key."""
    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def manifest_message(manifest: Mapping[str, Any]) -> bytes:
    """What the seal's signatures sign: DSSE PAE of the canonical manifest."""
    return pae(PAYLOAD_TYPE, canonical(dict(manifest)))


def sign_ed25519(key: Ed25519PrivateKey, manifest: Mapping[str, Any]) -> dict[str, str]:
    """A seal signature by a control-plane key, with the snapshot envelopes' key id."""
    signature = key.sign(manifest_message(manifest))
    return {"keyid": key_id_for(key.public_key()), "sig": base64.b64encode(signature).decode()}


def node_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """A node pack's seal key id: SHA-256 of the node key's DER SubjectPublicKeyInfo, 16 hex digits."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def certificate_sha256(pem: str) -> str:
    """Hex SHA-256 of a PEM certificate's DER: how the manifest names the node CA."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise PackInvalid("the node CA is not a PEM certificate") from exc
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@dataclass(frozen=True, slots=True)
class Searched:
    """The statement for one chain: every stored record with ``from_seq <= seq <= to_seq``
    was tested against the query; ``records`` matched. ``head_seq``: how far the chain is
    stored (records after ``to_seq`` were not searched: no checkpoint covers them yet)."""

    chain_id: str
    node_id: str
    from_seq: int
    to_seq: int
    records: int
    head_seq: int
    state: str
    alarm: str

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "node_id": self.node_id,
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
            "records": self.records,
            "head_seq": self.head_seq,
            "state": self.state,
            "alarm": self.alarm,
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> Searched:
        if not isinstance(value, dict):
            raise PackInvalid(f"{where}: not an object")
        strings = {k: value.get(k) for k in ("chain_id", "node_id", "state", "alarm")}
        numbers = {k: value.get(k) for k in ("from_seq", "to_seq", "records", "head_seq")}
        for k, v in strings.items():
            if not isinstance(v, str):
                raise PackInvalid(f"{where}: {k} must be a string")
        for k, v in numbers.items():
            if type(v) is not int or v < 0:
                raise PackInvalid(f"{where}: {k} must be an integer >= 0")
        return cls(**strings, **numbers)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ChainSection:
    """A chain section: the statement, the checkpoint and the multiproof of its records."""

    searched: Searched
    checkpoint: str
    proof: list[str]

    def line(self) -> bytes:
        s = self.searched
        value = {
            "section": "chain",
            "chain_id": s.chain_id,
            "node_id": s.node_id,
            "checkpoint": self.checkpoint,
            "records": s.records,
            "proof": self.proof,
            "searched": {"from_seq": s.from_seq, "to_seq": s.to_seq},
            "head_seq": s.head_seq,
            "state": s.state,
            "alarm": s.alarm,
        }
        return canonical(value) + b"\n"

    @classmethod
    def from_json(cls, value: dict[str, Any], where: str) -> ChainSection:
        searched = value.get("searched")
        if not isinstance(searched, dict):
            raise PackInvalid(f"{where}: searched must be an object with from_seq and to_seq")
        s = Searched.from_json({**value, **searched}, where)
        note, proof = value.get("checkpoint"), value.get("proof")
        if not isinstance(note, str):
            raise PackInvalid(f"{where}: checkpoint must be the note's text")
        if not isinstance(proof, list) or not all(isinstance(h, str) and len(h) == 64 for h in proof):
            raise PackInvalid(f"{where}: proof must be a list of 64-digit hex hashes")
        return cls(s, note, proof)


Signer = Callable[[dict[str, Any]], list[dict[str, str]]]
"""Signs a complete manifest: the seal's signatures."""


@dataclass
class PackWriter:
    """Writes a pack to ``out`` section by section, keeping the SHA-256 of every byte for
    the manifest; the records of each chain follow its section (``record``)."""

    out: BinaryIO
    content: Any = field(default_factory=hashlib.sha256)

    def write(self, data: bytes) -> None:
        self.content.update(data)
        self.out.write(data)

    def header(self, kind: str = KIND_CONTROL_PLANE) -> None:
        self.write(header_line(kind))

    def certificates(self, node_ca_pem: str, nodes: Mapping[str, list[str]]) -> None:
        self.write(certificates_line(node_ca_pem, nodes))

    def chain(self, section: ChainSection) -> None:
        self.write(section.line())

    def record(self, line: bytes) -> None:
        self.write(line if line.endswith(b"\n") else line + b"\n")

    def seal(self, manifest: dict[str, Any], sign: Signer) -> None:
        """Complete the manifest with ``content_sha256``, sign it and write the seal line."""
        manifest = {**manifest, "content_sha256": self.content.hexdigest()}
        self.out.write(seal_line(manifest, sign(manifest)))


# ---- reading ----


@dataclass(frozen=True, slots=True)
class Record:
    """A record line of a pack and where it is."""

    line_no: int
    chain_id: str
    line: bytes

    def fields(self) -> dict[str, Any]:
        try:
            value = json.loads(self.line)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class Certificates:
    node_ca: str
    nodes: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class Seal:
    manifest: dict[str, Any]
    signatures: list[dict[str, Any]]


Section = tuple[str, int, Any]
"""``(kind, line number, value)``: ``header`` (the kind), ``certificates``
(``Certificates``), ``chain`` (``ChainSection``), ``record`` (``Record``), ``seal`` (``Seal``)."""


def _read_line(f: BinaryIO, limit: int, line_no: int, what: str) -> bytes:
    line = f.readline(limit + 1)
    if len(line) > limit:
        raise PackInvalid(f"line {line_no}: {what} is longer than {limit} bytes")
    if line and not line.endswith(b"\n"):
        raise PackInvalid(f"line {line_no}: {what} does not end with a newline (a cut file?)")
    return line


def _json(line: bytes, line_no: int, what: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise PackInvalid(f"line {line_no}: {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise PackInvalid(f"line {line_no}: {what} is not a JSON object")
    return value


def read_sections(f: BinaryIO, *, content: Any = None) -> Iterator[Section]:
    """Every section and record of the pack in ``f``, in order, its structure checked (not
    its proofs or signatures). ``content``: a hash object fed every byte before the seal."""
    line_no = 1
    line = _read_line(f, 4096, line_no, "the header")
    header = _json(line, line_no, "the header") if line else {}
    if header.get("format") != FORMAT:
        raise PackInvalid(f"line 1: not an evidence pack (format must be {FORMAT!r})")
    if header.get("version") != VERSION:
        raise PackInvalid(f"line 1: version {str(header.get('version'))[:20]} (this reader knows {VERSION})")
    if header.get("kind") not in KINDS or set(header) != {"format", "version", "kind"}:
        raise PackInvalid(f"line 1: kind must be one of {', '.join(KINDS)} (and nothing else in the header)")
    if content is not None:
        content.update(line)
    yield "header", line_no, header["kind"]
    certificates_seen = False
    while True:
        line_no += 1
        line = _read_line(f, MAX_SECTION_BYTES, line_no, "a section")
        if not line:
            raise PackInvalid(f"line {line_no}: the pack ends without a seal (a cut file?)")
        value = _json(line, line_no, "a section")
        kind = value.get("section")
        if kind == "seal":
            seal = _seal(value, line, line_no)
            if f.read(1):
                raise PackInvalid(f"line {line_no + 1}: something follows the seal")
            yield "seal", line_no, seal
            return
        if content is not None:
            content.update(line)
        if kind == "certificates":
            if certificates_seen or line_no != 2:
                raise PackInvalid(f"line {line_no}: the certificates section must be line 2, once")
            certificates_seen = True
            yield "certificates", line_no, _certificates(value, line_no)
        elif kind == "chain":
            if not certificates_seen:
                raise PackInvalid(f"line {line_no}: a chain before the certificates section")
            section = ChainSection.from_json(value, f"line {line_no}: chain section")
            yield "chain", line_no, section
            chain_id = section.searched.chain_id
            for _ in range(section.searched.records):
                line_no += 1
                line = _read_line(f, MAX_RECORD_BYTES, line_no, f"chain {chain_id}: a record")
                if not line:
                    raise PackInvalid(
                        f"line {line_no}: chain {chain_id}: the pack ends before its "
                        f"{section.searched.records} records do"
                    )
                if content is not None:
                    content.update(line)
                yield "record", line_no, Record(line_no, chain_id, line)
        else:
            raise PackInvalid(f"line {line_no}: unknown section {str(kind)[:40]!r}")


def _certificates(value: dict[str, Any], line_no: int) -> Certificates:
    node_ca, nodes = value.get("node_ca"), value.get("nodes")
    if not isinstance(node_ca, str) or not isinstance(nodes, dict):
        raise PackInvalid(f"line {line_no}: certificates needs node_ca (PEM) and nodes (an object)")
    for node_id, pems in nodes.items():
        if not isinstance(pems, list) or not all(isinstance(p, str) for p in pems):
            raise PackInvalid(f"line {line_no}: certificates of node {node_id[:100]!r} must be a list of PEM")
    return Certificates(node_ca, nodes)


def _seal(value: dict[str, Any], line: bytes, line_no: int) -> Seal:
    manifest, signatures = value.get("manifest"), value.get("signatures")
    if not isinstance(manifest, dict) or not isinstance(signatures, list):
        raise PackInvalid(f"line {line_no}: the seal needs a manifest and a list of signatures")
    if not all(isinstance(s, dict) for s in signatures):
        raise PackInvalid(f"line {line_no}: each seal signature is an object (keyid, sig)")
    if set(value) != {"section", "manifest", "signatures"} or seal_line(manifest, signatures) != line:
        # Canonical, so not one byte of the seal can change without its signature failing.
        raise PackInvalid(f"line {line_no}: the seal line is not in canonical form (edited?)")
    return Seal(manifest, signatures)


def record_count_hint(path: Path) -> int | None:
    """The record count the (not yet verified) manifest claims: for progress bars only."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except OSError:
        return None
    last = tail.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        count = json.loads(last)["manifest"]["records"]
    except (ValueError, KeyError, TypeError):
        return None
    return count if type(count) is int and count >= 0 else None


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
    """What a node pack's verification does not vouch for (say it next to OK)."""


@dataclass
class _ChainCheck:
    """One chain section being checked, record by record."""

    section: ChainSection
    line_no: int
    certificates: list[x509.Certificate]
    node_ca: x509.Certificate | None
    node_key: x509.Certificate | ec.EllipticCurvePublicKey | None = None
    """A node pack's key (its certificate, already checked, or its bare public key)."""
    leaves: list[tuple[int, bytes]] = field(default_factory=list)
    seq: int = 0
    hash: str = ""

    def record(self, record: Record) -> None:
        s = self.section.searched
        line = record.line
        where = f"line {record.line_no}: chain {s.chain_id}"
        digest = hash_of_line(line)
        if digest is None:
            raise PackInvalid(f"{where}: not a record line (its last member is not its hash)")
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise PackInvalid(f"{where}: the record is not JSON") from exc
        if not isinstance(fields, dict) or type(fields.get("seq")) is not int:
            raise PackInvalid(f"{where}: the record is not a JSON object with an integer seq")
        seq: int = fields["seq"]
        where = f"{where}: record seq {seq}"
        if fields.get("hash") != digest:
            raise PackInvalid(f"{where}: hash does not match the record's bytes (edited?)")
        if fields.get("chain_id") != s.chain_id or fields.get("node_id") != s.node_id:
            raise PackInvalid(f"{where}: the record is of chain {str(fields.get('chain_id'))[:100]!r}")
        if not s.from_seq <= seq <= s.to_seq:
            raise PackInvalid(f"{where}: outside the searched range {s.from_seq}..{s.to_seq}")
        if seq <= self.seq:
            raise PackInvalid(f"{where}: comes after seq {self.seq} (records ascend: reordered or repeated?)")
        prev = fields.get("prev_hash")
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
        for n, cert in enumerate(self.certificates if self.node_ca is not None else [], start=1):
            assert self.node_ca is not None
            try:
                cp = checkpoint.verify_with_ca(note, cert, self.node_ca, s.node_id)
                break
            except checkpoint.CheckpointInvalid as exc:
                problems.append(f"certificate {n}: {exc}")
        if cp is None:
            why = "; ".join(problems) or f"the pack has no certificate of node {s.node_id!r}"
            raise PackInvalid(
                f"{where}: the checkpoint does not verify with a certificate of its node ({why})"
            )
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
    plane's public keys ``trusted`` (by key id, as ``store.load_trust_keys`` reads them);
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
                    current = _ChainCheck(value, line_no, certs.get(s.node_id, []), ca)
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
                return report if node is None else dataclasses.replace(report, notes=node.notes)
    raise PackInvalid("the pack ends without a seal")  # read_sections raises first


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
