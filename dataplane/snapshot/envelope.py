"""DSSE-style signed envelopes: what is signed, and how a node verifies it.

Signatures cover the pre-authentication encoding (PAE) of the payload type and
the exact payload bytes, so a signature can never be replayed as another type.
Whether a signature is required is the node's configuration, never the
envelope's: ``verify`` demands at least one valid signature from a trusted key.
Signatures by unknown key ids are ignored, so a rotation can carry old and new
signatures side by side; signatures by revoked key ids are ignored too, and an
envelope signed only by revoked keys is refused as such.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from dataplane.errors import EnvelopeError
from dataplane.files import read_regular
from signalbox.api.config.v1 import snapshot_pb2

SNAPSHOT_PAYLOAD_TYPE = "application/vnd.signalbox.snapshot.v1+protobuf"
STATEMENT_PAYLOAD_TYPE = "application/vnd.signalbox.trust-statement.v1+protobuf"
"""A ``TrustStatement``: which signing keys to trust; never applied as a snapshot (and a
signature over one can never be replayed as a snapshot's: PAE covers the type)."""
MAX_IDS_CHARS = 200
"""Key ids come from the envelope: a reason quoting them is cut here."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    return pae_prefix(payload_type, len(payload)) + payload


def pae_prefix(payload_type: str, payload_length: int) -> bytes:
    """What PAE puts before a payload of ``payload_length`` bytes."""
    type_bytes = payload_type.encode()
    return b"DSSEv1 %d %b %d " % (len(type_bytes), type_bytes, payload_length)


def payload_sha256(envelope: snapshot_pb2.SignedEnvelope) -> bytes:
    return hashlib.sha256(envelope.payload).digest()


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A stable id for a public key: the first 16 hex digits of its SHA-256."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify(
    envelope: snapshot_pb2.SignedEnvelope,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    revoked: AbstractSet[str] = frozenset(),
    payload_type: str = SNAPSHOT_PAYLOAD_TYPE,
    message: bytes | None = None,
) -> str:
    """Check the envelope; return the key id whose signature verified.

    Raises ``EnvelopeError`` if the payload type is not ``payload_type``, no trusted key
    is configured, or no signature by a trusted key verifies. ``message``: the PAE of the
    payload when the caller built it (a rebuilt delta), else it is built from the envelope.
    """
    if envelope.payload_type != payload_type:
        raise EnvelopeError(f"payload_type: expected {payload_type!r}, got {envelope.payload_type[:100]!r}")
    if not trusted:
        raise EnvelopeError("no trust key configured: refusing to apply any snapshot")
    if not envelope.signatures:
        raise EnvelopeError("envelope is unsigned")
    signers = sorted({s.key_id for s in envelope.signatures})
    if all(key_id in revoked for key_id in signers):
        raise EnvelopeError(f"signed only by revoked key {', '.join(signers)}"[:MAX_IDS_CHARS])
    if message is None:
        message = pae(envelope.payload_type, envelope.payload)
    seen_trusted = False
    for signature in envelope.signatures:
        key = None if signature.key_id in revoked else trusted.get(signature.key_id)
        if key is None:
            continue
        seen_trusted = True
        try:
            key.verify(signature.sig, message)
        except InvalidSignature:
            continue
        return signature.key_id
    if not seen_trusted:
        ids = ", ".join(signers) or "none"
        raise EnvelopeError(f"no signature by a trusted key (signed by: {ids})"[:MAX_IDS_CHARS])
    raise EnvelopeError("signature verification failed")


MAX_TRUST_KEY_BYTES = 64 * 1024
"""A trust key file larger than this is refused unread (an Ed25519 PEM is 113 bytes)."""


def load_trust_keys(paths: list[Path] | tuple[Path, ...]) -> dict[str, Ed25519PublicKey]:
    """Read Ed25519 public keys (PEM) and index them by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            # Opened without blocking: a FIFO given as --trust-key hung the start.
            key = load_pem_public_key(read_regular(Path(path), MAX_TRUST_KEY_BYTES))
        except (OSError, ValueError) as exc:
            raise ValueError(f"trust key {path}: cannot be read as a PEM public key: {exc}") from exc
        except UnsupportedAlgorithm:
            # A key type or curve the library does not know: no ValueError, and no Ed25519 key.
            raise ValueError(f"trust key {path}: not an Ed25519 public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"trust key {path}: not an Ed25519 public key")
        keys[key_id_for(key)] = key
    return keys
