"""The control plane's witness cosignature on a node's checkpoint (C2SP tlog-cosignature/v1).

A checkpoint's ``time`` line is the node's own claim: a node with a wrong clock, or a stolen
node key, can date a checkpoint whenever it likes. When the control plane stores a checkpoint
(shipped or imported, once its root matched the stored records), it adds one more signature
line to the note: a cosignature saying "this checkpoint existed when I saw it, at time T", by
its own Ed25519 signing key, with T from its own clock. An auditor then knows each record
under the checkpoint existed no later than T, whatever the node claimed, and judges a
revoked node certificate against T (``pack_facts.revocation_note``).

The line follows C2SP tlog-cosignature/v1::

    — signalbox-control-plane/<key id> <base64(key hash || timestamp || signature)>

- the key name is ``signalbox-control-plane/`` and the control plane's key id (the one its
  trust key files and snapshot signatures use);
- key hash: the first 4 bytes of SHA-256(key name + ``"\\n"`` + ``0x04`` + the 32-byte raw
  Ed25519 public key);
- timestamp: 8 bytes, big-endian, Unix seconds;
- signature: Ed25519 over ``"cosignature/v1\\ntime <timestamp>\\n"`` followed by the
  checkpoint's body (its text up to and including the ``\\n`` before the empty line).

Other signature lines (the node's) are left alone and ignored here, as C2SP says a verifier
ignores signatures by keys it does not know.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_NAME_PREFIX = "signalbox-control-plane/"
SIGNATURE_PREFIX = "\u2014 "
_TYPE_COSIGNATURE_V1 = b"\x04"
_BLOB_BYTES = 4 + 8 + 64
_TIMESTAMP = struct.Struct("!Q")
_MAX_TIMESTAMP = 2**63 - 1


class CosignatureInvalid(ValueError):
    """A cosignature line by a trusted key that does not verify; the message says why."""


@dataclass(frozen=True, slots=True)
class Witness:
    """A verified cosignature: the control plane's key id, and when it saw the checkpoint."""

    key_id: str
    time: int
    """Unix seconds, from the control plane's clock."""


def key_name(key_id: str) -> str:
    return f"{KEY_NAME_PREFIX}{key_id}"


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(name.encode() + b"\n" + _TYPE_COSIGNATURE_V1 + raw).digest()[:4]


def _body(note: bytes) -> bytes:
    text, sep, _ = note.partition(b"\n\n")
    if not sep:
        raise CosignatureInvalid("not a signed note: no empty line after its body")
    return text + b"\n"


def _message(timestamp: int, body: bytes) -> bytes:
    return b"cosignature/v1\ntime %d\n" % timestamp + body


def cosign(note: bytes, key_id: str, private_key: Ed25519PrivateKey, timestamp: int) -> bytes:
    """``note`` with a cosignature line by the control plane key ``key_id`` appended, dated
    ``timestamp`` (Unix seconds)."""
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise ValueError(f"timestamp {timestamp} is out of range")
    if not note.endswith(b"\n"):
        raise CosignatureInvalid("a signed note ends in \\n")
    name = key_name(key_id)
    signature = private_key.sign(_message(timestamp, _body(note)))
    blob = key_hash(name, private_key.public_key()) + _TIMESTAMP.pack(timestamp) + signature
    return note + f"{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode()}\n".encode()


def cosigned_by(note: bytes) -> set[str]:
    """The key ids of the control-plane cosignature lines in ``note`` (unverified)."""
    _, sep, lines = note.partition(b"\n\n")
    prefix = (SIGNATURE_PREFIX + KEY_NAME_PREFIX).encode()
    return {
        line[len(prefix) :].partition(b" ")[0].decode(errors="replace")
        for line in lines.split(b"\n")
        if sep and line.startswith(prefix)
    }


def witnesses(note: bytes, trusted: Mapping[str, Ed25519PublicKey]) -> list[Witness]:
    """Every cosignature in ``note`` by a key of ``trusted`` (key id -> public key), each
    verified, in the note's order. A line naming a trusted key that does not verify (edited
    time, another checkpoint's line, a changed body) raises ``CosignatureInvalid``; lines by
    other keys are ignored."""
    body = _body(note)
    found: list[Witness] = []
    for line in note.partition(b"\n\n")[2].split(b"\n"):
        try:
            text = line.decode()
        except UnicodeDecodeError as exc:
            raise CosignatureInvalid("a signature line is not UTF-8") from exc
        if not text.startswith(SIGNATURE_PREFIX + KEY_NAME_PREFIX):
            continue
        name, _, blob = text.removeprefix(SIGNATURE_PREFIX).partition(" ")
        key_id = name.removeprefix(KEY_NAME_PREFIX)
        public = trusted.get(key_id)
        if public is None:
            continue
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError as exc:  # binascii.Error, or text that is not ASCII (a plain ValueError)
            raise CosignatureInvalid(f"the cosignature of {name[:120]} is not standard base64") from exc
        if len(raw) != _BLOB_BYTES or raw[:4] != key_hash(name, public):
            raise CosignatureInvalid(f"the cosignature of {name[:120]} is not one by that key")
        (timestamp,) = _TIMESTAMP.unpack(raw[4:12])
        if timestamp > _MAX_TIMESTAMP:
            raise CosignatureInvalid(f"the cosignature of {name[:120]} has a timestamp out of range")
        try:
            public.verify(raw[12:], _message(timestamp, body))
        except InvalidSignature as exc:
            raise CosignatureInvalid(
                f"the cosignature of {name[:120]} does not verify (its time or the checkpoint changed)"
            ) from exc
        found.append(Witness(key_id, timestamp))
    return found
