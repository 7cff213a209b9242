"""Evidence Packs (format v2; v1 still read): one file that proves which stored records
matched a query and that none was left out, checked offline with nothing but the control
plane's public key.

The format is documented in docs/evidence-format.md ("Evidence Packs"); in short, UTF-8
lines, each ending in ``\\n``:

1. header ``{"format":"signalbox-evidence-pack","version":2,"kind":"control-plane"}``
   (``kind`` ``node``: a node's own export, ``dataplane.evidence.node_pack``, still version 1);
2. ``{"section":"certificates","node_ca":PEM,"nodes":{node_id:[PEM,...]},"revoked":{sha256:time}}``
   (``revoked``: version 2 control-plane packs only, certificate SHA-256 -> RFC 3339 time of
   its revocation, ``{}`` when none was revoked);
3. version 2, only when a listed chain had records pruned by retention:
   ``{"section":"pruned","statements":{chain_id:[envelope,...]}}``, each chain's signed
   pruned-range statements (``dataplane.evidence.pruned``), oldest first;
4. per chain ``{"section":"chain",...}`` followed by exactly ``records`` raw record lines,
   byte for byte as the node wrote them, in seq order;
5. ``{"section":"seal","manifest":{...},"signatures":[{"keyid":..,"sig":..}]}``, the last
   line, canonical JSON (so no byte of it can change without the signature failing).

Version 2 is not readable by a version 1 reader on purpose: it would accept a pack over a
pruned range, or with a revoked certificate, without the checks below.

Building a pack is the control plane's (``controlplane.evidence.export``) through
``PackWriter``; this module is the format and the reader (``read_sections``, for ``show``);
the verifier is ``dataplane.evidence.pack_verify.verify``. Neither imports anything of the
control plane, so ``signalbox evidence verify`` runs with the data-plane install alone.

What ``pack_verify.verify`` checks, stopping at the first problem (``PackInvalid`` names the line of
the pack, and the chain and record seq where there is one):

- the structure: header, certificates, chain sections each followed by their records, the
  seal last, nothing after it, every line bounded;
- every node certificate is issued by the pack's node CA for its node, and the node CA is
  the one the signed manifest names (SHA-256 of its DER);
- pruned ranges (``pack_facts``): every statement verifies with a trusted key, is of the
  chain it is listed under and continues the one before; every chain of a control-plane
  pack is searched from one after its last pruned seq (from 1 without a statement), and a
  record right after the pruned range links to the last pruned record's hash;
- per chain: its checkpoint is signed by a certificate of its node and is of size
  ``to_seq``; every record's hash is over its own bytes (``records.hash_of_line``), its
  ``chain_id`` and ``node_id`` are the chain's, its seq is within ``[from_seq, to_seq]``
  and above the previous one, and consecutive seqs link (``prev_hash``); the multiproof
  and the records make the checkpoint's root (``merkle.root_from_multiproof``);
- revoked certificates (``pack_facts``): each names a certificate of the pack; a checkpoint
  verifying only with certificates revoked before its own time fails, one revoked after it
  is a note in the ``Report``;
- the seal: signed (DSSE PAE over the canonical manifest) by a trusted key with every
  signature verifying, ``content_sha256`` is the SHA-256 of every byte before the seal
  line, and the manifest's chains, ranges and counts are those of the sections.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

FORMAT = "signalbox-evidence-pack"
VERSION = 2
"""What the control plane writes: version 1 plus revoked certificates and pruned ranges."""
VERSIONS = (1, 2)
"""What this reader checks. Version 1 packs verify as before; a version 1 reader refuses a
version 2 pack (it would skip the pruned-range and revocation checks)."""
NODE_VERSION = 1
"""What a node writes (``node_pack``): its packs hold neither revocations nor pruned ranges."""
MAX_PRUNED_STATEMENTS = 10_000
"""The most pruned-range statements the ``pruned`` section may hold per chain."""
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


def version_written(kind: str) -> int:
    """The version a pack of ``kind`` is written as."""
    return VERSION if kind == KIND_CONTROL_PLANE else NODE_VERSION


def header_line(kind: str = KIND_CONTROL_PLANE, version: int | None = None) -> bytes:
    """The header; ``version`` by default what ``kind`` is written as (``VERSION``, or
    ``NODE_VERSION`` for a node's pack)."""
    version = version_written(kind) if version is None else version
    # Fixed member order (not sorted): the first thing a person reading the file sees is what it is.
    return b'{"format":"%b","version":%d,"kind":"%b"}\n' % (FORMAT.encode(), version, kind.encode())


def certificates_line(
    node_ca_pem: str, nodes: Mapping[str, list[str]], revoked: Mapping[str, str] | None = None
) -> bytes:
    """``revoked`` (version 2): certificate SHA-256 -> RFC 3339 time of its revocation."""
    value: dict[str, Any] = {"section": "certificates", "node_ca": node_ca_pem, "nodes": dict(nodes)}
    if revoked is not None:
        value["revoked"] = dict(revoked)
    return canonical(value) + b"\n"


def pruned_line(statements: Mapping[str, list[str]]) -> bytes:
    """The ``pruned`` section (version 2): per chain, its pruned-range statements (DSSE
    envelopes as stored, ``dataplane.evidence.pruned``), oldest first."""
    return canonical({"section": "pruned", "statements": dict(statements)}) + b"\n"


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
            if k in ("chain_id", "node_id") and len(v) > MAX_ID_CHARS:
                # Echoed in every message about the chain: bounded before anything names it.
                raise PackInvalid(f"{where}: {k} is longer than {MAX_ID_CHARS} characters")
        for k, v in numbers.items():
            if type(v) is not int or v < 0:
                raise PackInvalid(f"{where}: {k} must be an integer >= 0")
        return cls(**strings, **numbers)  # type: ignore[arg-type]


MAX_ID_CHARS = 300
"""A chain or node id's length at most: a node id is at most 256 characters (what enrollment,
sync and import take), and a chain id adds ``/`` and its worker."""


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
    states_revocations: bool = False
    """Set by ``header``: a version 2 control-plane pack, whose certificates carry ``revoked``."""

    def write(self, data: bytes) -> None:
        self.content.update(data)
        self.out.write(data)

    def header(self, kind: str = KIND_CONTROL_PLANE, version: int | None = None) -> None:
        version = version_written(kind) if version is None else version
        self.states_revocations = kind == KIND_CONTROL_PLANE and version >= 2
        self.write(header_line(kind, version))

    def certificates(
        self, node_ca_pem: str, nodes: Mapping[str, list[str]], revoked: Mapping[str, str] | None = None
    ) -> None:
        if (revoked is not None) != self.states_revocations:
            # Never a default: an empty map states that no certificate was revoked.
            raise ValueError(
                "a version 2 control-plane pack states its revoked certificates (revoked={} for none), "
                "any other pack none"
            )
        self.write(certificates_line(node_ca_pem, nodes, revoked))

    def pruned(self, statements: Mapping[str, list[str]]) -> None:
        self.write(pruned_line(statements))

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
        except (ValueError, RecursionError):  # RecursionError: nested too deep (see ``_json``)
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class Certificates:
    node_ca: str
    nodes: dict[str, list[str]]
    revoked: dict[str, str] | None = None
    """Certificate SHA-256 (hex, of the DER) -> RFC 3339 revocation time; None in version 1."""


@dataclass(frozen=True, slots=True)
class Seal:
    manifest: dict[str, Any]
    signatures: list[dict[str, Any]]


Section = tuple[str, int, Any]
"""``(kind, line number, value)``: ``header`` (the kind), ``certificates``
(``Certificates``), ``pruned`` (chain id -> its statements' envelope texts), ``chain``
(``ChainSection``), ``record`` (``Record``), ``seal`` (``Seal``)."""


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
    except RecursionError as exc:
        # json.loads has no depth limit but the interpreter's stack: 4 KB of "[" is enough
        # (a header line). Not a ValueError, so the commands and import did not catch it.
        raise PackInvalid(f"line {line_no}: {what} is JSON nested too deep") from exc
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
    version = header.get("version")
    if type(version) is not int or version not in VERSIONS:
        raise PackInvalid(
            f"line 1: version {str(version)[:20]} (this reader knows {', '.join(map(str, VERSIONS))})"
        )
    kind = header.get("kind")
    if kind not in KINDS or set(header) != {"format", "version", "kind"}:
        raise PackInvalid(f"line 1: kind must be one of {', '.join(KINDS)} (and nothing else in the header)")
    # Version 2 control-plane packs state revocations (an empty map: none); node packs
    # and version 1 packs hold neither revocations nor pruned ranges.
    v2_control_plane = version == 2 and kind == KIND_CONTROL_PLANE
    if content is not None:
        content.update(line)
    yield "header", line_no, kind
    certificates_seen = pruned_seen = chain_seen = False
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
            yield "certificates", line_no, _certificates(value, line_no, revoked=v2_control_plane)
        elif kind == "pruned":
            if not v2_control_plane:
                raise PackInvalid(
                    f"line {line_no}: a pruned section is only in a version 2 control-plane pack"
                )
            if pruned_seen or chain_seen or not certificates_seen:
                raise PackInvalid(f"line {line_no}: the pruned section comes once, after the certificates")
            pruned_seen = True
            yield "pruned", line_no, _pruned(value, line_no)
        elif kind == "chain":
            if not certificates_seen:
                raise PackInvalid(f"line {line_no}: a chain before the certificates section")
            chain_seen = True
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


def _certificates(value: dict[str, Any], line_no: int, *, revoked: bool) -> Certificates:
    """The section; ``revoked``: whether it must carry the ``revoked`` map (else must not)."""
    node_ca, nodes = value.get("node_ca"), value.get("nodes")
    if not isinstance(node_ca, str) or not isinstance(nodes, dict):
        raise PackInvalid(f"line {line_no}: certificates needs node_ca (PEM) and nodes (an object)")
    for node_id, pems in nodes.items():
        if not isinstance(pems, list) or not all(isinstance(p, str) for p in pems):
            raise PackInvalid(f"line {line_no}: certificates of node {node_id[:100]!r} must be a list of PEM")
    times = value.get("revoked")
    if not revoked:
        if times is not None:
            raise PackInvalid(f"line {line_no}: revoked is only in a version 2 control-plane pack")
        return Certificates(node_ca, nodes)
    if not isinstance(times, dict) or not all(isinstance(t, str) for t in times.values()):
        raise PackInvalid(
            f"line {line_no}: certificates needs revoked (an object: certificate SHA-256 -> RFC 3339 time)"
        )
    return Certificates(node_ca, nodes, times)


def _pruned(value: dict[str, Any], line_no: int) -> dict[str, list[str]]:
    statements = value.get("statements")
    if not isinstance(statements, dict) or set(value) != {"section", "statements"}:
        raise PackInvalid(f"line {line_no}: the pruned section needs statements (an object), nothing else")
    for chain_id, envelopes in statements.items():
        if (
            not isinstance(envelopes, list)
            or not 0 < len(envelopes) <= MAX_PRUNED_STATEMENTS
            or not all(isinstance(e, str) for e in envelopes)
        ):
            raise PackInvalid(
                f"line {line_no}: pruned statements of chain {chain_id[:100]!r} must be a list of "
                f"1..{MAX_PRUNED_STATEMENTS} envelopes (text)"
            )
    return statements


def _seal(value: dict[str, Any], line: bytes, line_no: int) -> Seal:
    manifest, signatures = value.get("manifest"), value.get("signatures")
    if not isinstance(manifest, dict) or not isinstance(signatures, list):
        raise PackInvalid(f"line {line_no}: the seal needs a manifest and a list of signatures")
    if not all(isinstance(s, dict) and set(s) == {"keyid", "sig"} for s in signatures) or not all(
        isinstance(v, str) for s in signatures for v in s.values()
    ):
        # Exactly these: a member nothing checks would be bytes of the seal no signature covers.
        raise PackInvalid(f"line {line_no}: each seal signature is an object of keyid and sig (text), only")
    if len({s["keyid"] for s in signatures}) != len(signatures):
        # One key counted twice would be reported as two signatures.
        raise PackInvalid(f"line {line_no}: a key signs the seal more than once")
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
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return count if type(count) is int and count >= 0 else None
