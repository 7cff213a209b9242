"""Signed checkpoints of an evidence chain: C2SP tlog-checkpoint bodies in C2SP signed notes.

A checkpoint commits to the first ``size`` records of one chain (``dataplane.evidence.log``)
through the root of their RFC 9162 Merkle tree (``dataplane.evidence.merkle``). Its text,
UTF-8, every line ending in ``\\n``::

    signalbox.evidence/<chain_id>                 origin (chain_id = <node_id>/<worker>)
    <size>                                        tree size, decimal, no leading zeros
    <root>                                        root hash, standard base64 (44 characters)
    time <unix seconds>                           extension line: when it was signed
                                                  (empty line: end of the body)
    — signalbox-node/<node_id> <base64(key id || signature)>

The last line is a C2SP signed-note signature line (an em dash U+2014 and a space, the
key name, a space, the base64 signature blob). The signed message is the body: every byte
up to and including the ``\\n`` of the ``time`` line. The blob is the 4-byte key id
followed by the DER ECDSA-SHA256 (P-256) signature of the body by the node's key
(``<data_dir>/identity/node.key``); the key id is the first 4 bytes of
SHA-256(key name + ``"\\n"`` + DER SubjectPublicKeyInfo of the node's public key). ECDSA
signatures are randomized, so two signatures of the same body differ; both verify.

The node key is the one the control plane certifies at enrollment (``node.crt``, issued
by the node CA, naming ``urn:signalbox:node:<node_id>``): ``verify_with_ca`` checks that
certificate against a given node CA and node id, then the note with its public key. A
node that never enrolled (an air-gapped node serving a pinned snapshot) generates its
key the same way enrollment would, signs with it from its first checkpoint on, and gets
the certificate for that same key when it is provisioned; until then its checkpoints
verify against the bare public key (``verify``) only.

Checkpoints of a chain are appended to ``<chain file>.checkpoints``: each note followed
by one more ``\\n``, so every entry ends in ``\\n\\n`` and no note contains ``\\n\\n``
except between its body and its signature (``split`` relies on exactly that; a torn last
entry is what follows the last ``\\n\\n``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ORIGIN_PREFIX = "signalbox.evidence/"
KEY_NAME_PREFIX = "signalbox-node/"
SIGNATURE_PREFIX = "\u2014 "
ENTRY_END = b"\n\n"
MAX_NOTE_BYTES = 4096
"""Longer than any checkpoint this module writes; a longer note is refused unread."""

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_TIME = re.compile(r"time (0|[1-9][0-9]{0,19})")
_URN_NODE = "urn:signalbox:node:"


class CheckpointInvalid(ValueError):
    """A checkpoint that cannot be parsed or does not verify; the message says why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed checkpoint (``verify`` has checked its signature; ``parse`` has not)."""

    chain_id: str
    """``<node_id>/<worker>``, from the origin line."""
    size: int
    """How many records (leaves) the tree has."""
    root: bytes
    """The 32-byte RFC 9162 root hash of the first ``size`` records."""
    time: int
    """Unix seconds when the node signed it."""
    note: bytes
    """The whole signed note, as stored."""

    @property
    def node_id(self) -> str:
        return node_of(self.chain_id)


def node_of(chain_id: str) -> str:
    """The node id part of a chain id (``<node_id>/<worker>``)."""
    return chain_id.rpartition("/")[0]


def key_name(node_id: str) -> str:
    return f"{KEY_NAME_PREFIX}{node_id}"


def key_id(name: str, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 4-byte C2SP key id: SHA-256(name + "\\n" + DER SubjectPublicKeyInfo)[:4]."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(name.encode() + b"\n" + spki).digest()[:4]


def body(chain_id: str, size: int, root: bytes, when: int) -> bytes:
    """The signed text of a checkpoint."""
    if not chain_id or any(c.isspace() for c in chain_id) or "/" not in chain_id:
        raise CheckpointInvalid(f"chain id {chain_id!r}: must be <node_id>/<worker> without whitespace")
    if size < 0 or len(root) != 32 or when < 0:
        raise CheckpointInvalid("size and time must be >= 0 and the root 32 bytes")
    return f"{ORIGIN_PREFIX}{chain_id}\n{size}\n{base64.b64encode(root).decode()}\ntime {when}\n".encode()


def sign(key: ec.EllipticCurvePrivateKey, chain_id: str, size: int, root: bytes, when: int) -> bytes:
    """The signed note of checkpoint ``(chain_id, size, root, when)`` by the node's ``key``."""
    text = body(chain_id, size, root, when)
    name = key_name(node_of(chain_id))
    signature = key.sign(text, ec.ECDSA(hashes.SHA256()))
    blob = base64.b64encode(key_id(name, key.public_key()) + signature).decode()
    return text + f"\n{SIGNATURE_PREFIX}{name} {blob}\n".encode()


def _split_note(note: bytes) -> tuple[bytes, list[str]]:
    if len(note) > MAX_NOTE_BYTES:
        raise CheckpointInvalid(f"note is {len(note)} bytes, more than {MAX_NOTE_BYTES}")
    text, sep, signatures = note.partition(b"\n\n")
    if not sep or not signatures.endswith(b"\n"):
        raise CheckpointInvalid("not a signed note: no empty line before a signature line ending in \\n")
    try:
        lines = signatures.decode().split("\n")[:-1]
    except UnicodeDecodeError as exc:
        raise CheckpointInvalid("signature lines are not UTF-8") from exc
    return text + b"\n", lines


def parse(note: bytes) -> Checkpoint:
    """The checkpoint in ``note``, its structure checked but not its signature."""
    text, signatures = _split_note(note)
    if not signatures or not all(line.startswith(SIGNATURE_PREFIX) for line in signatures):
        raise CheckpointInvalid("every line after the empty line must be a signature line (— name sig)")
    try:
        lines = text.decode().split("\n")[:-1]
    except UnicodeDecodeError as exc:
        raise CheckpointInvalid("body is not UTF-8") from exc
    if len(lines) != 4:
        raise CheckpointInvalid(f"body has {len(lines)} lines; a checkpoint has 4 (origin, size, root, time)")
    origin, size, root, when = lines
    if not origin.startswith(ORIGIN_PREFIX) or "/" not in origin.removeprefix(ORIGIN_PREFIX):
        raise CheckpointInvalid(f"origin {origin[:120]!r} is not {ORIGIN_PREFIX}<node_id>/<worker>")
    if not _SIZE.fullmatch(size):
        raise CheckpointInvalid(f"size {size[:40]!r} is not a decimal number")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except ValueError as exc:  # binascii.Error, or text that is not ASCII (a plain ValueError)
        raise CheckpointInvalid("root hash is not standard base64") from exc
    if len(root_hash) != 32 or base64.b64encode(root_hash).decode() != root:
        raise CheckpointInvalid("root hash is not the base64 of 32 bytes")
    matched = _TIME.fullmatch(when)
    if matched is None:
        raise CheckpointInvalid(f"extension line {when[:60]!r} is not 'time <unix seconds>'")
    return Checkpoint(origin.removeprefix(ORIGIN_PREFIX), int(size), root_hash, int(matched[1]), note)


def verify(note: bytes, key: ec.EllipticCurvePublicKey | x509.Certificate) -> Checkpoint:
    """The checkpoint in ``note`` once its node's signature verifies with ``key`` (the node's
    public key, or its certificate); ``CheckpointInvalid`` otherwise."""
    checkpoint = parse(note)
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CheckpointInvalid("the node key is not an ECDSA key")
    name = key_name(checkpoint.node_id)
    wanted = key_id(name, public)
    text, signatures = _split_note(note)
    for line in signatures:
        signer, _, blob = line.removeprefix(SIGNATURE_PREFIX).partition(" ")
        if signer != name:
            continue  # C2SP: signatures by other keys are ignored
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError as exc:  # binascii.Error, or text that is not ASCII
            raise CheckpointInvalid(f"signature of {name} is not standard base64") from exc
        if raw[:4] != wanted:
            continue
        try:
            public.verify(raw[4:], text, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise CheckpointInvalid(f"signature of {name} does not verify") from exc
        return checkpoint
    raise CheckpointInvalid(f"no signature by {name} with this node's key")


def check_certificate(cert: x509.Certificate, ca: x509.Certificate, node_id: str) -> None:
    """``CheckpointInvalid`` unless ``cert`` was issued by the node CA ``ca`` for ``node_id``."""
    try:
        cert.verify_directly_issued_by(ca)
    except UnsupportedAlgorithm as exc:
        # A key type or curve the library does not know (an OID an attacker wrote): no crash.
        raise CheckpointInvalid(
            "the node CA's key or the certificate's signature is of an unsupported kind"
        ) from exc
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CheckpointInvalid("the node certificate was not issued by the given node CA") from exc
    try:
        cert.public_key()  # read again by every check of what the certificate signs
    except UnsupportedAlgorithm as exc:
        raise CheckpointInvalid("the node certificate's key is of an unsupported kind") from exc
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if f"{_URN_NODE}{quote(node_id, safe='')}" not in uris:
        raise CheckpointInvalid(f"the node certificate does not name node {node_id!r}")


def verify_with_ca(note: bytes, cert: x509.Certificate, ca: x509.Certificate, node_id: str) -> Checkpoint:
    """``verify`` with the node certificate ``cert``, once ``cert`` is shown to be issued by the
    node CA ``ca`` for ``node_id`` and the checkpoint to be of a chain of that node."""
    check_certificate(cert, ca, node_id)
    checkpoint = verify(note, cert)
    if checkpoint.node_id != node_id:
        raise CheckpointInvalid(f"checkpoint of node {checkpoint.node_id!r}, not of {node_id!r}")
    return checkpoint


def split(data: bytes) -> tuple[list[bytes], int]:
    """The complete notes in a checkpoints file's bytes, and the length of the complete
    part (what follows it is a torn last entry)."""
    notes: list[bytes] = []
    at = 0
    while True:
        first = data.find(ENTRY_END, at)
        if first < 0:
            break
        end = data.find(ENTRY_END, first + 2)
        if end < 0:
            break
        notes.append(data[at : end + 1])
        at = end + 2
    return notes, at


def read_notes(path: Path) -> list[bytes]:
    """Every complete note of a checkpoints file, in order (none when there is no file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return split(data)[0]


def checkpoints_path(log: Path) -> Path:
    """Where the checkpoints of the chain in ``log`` are kept."""
    return log.with_name(log.name + ".checkpoints")
