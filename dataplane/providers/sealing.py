"""Provider credentials sealed to a node group's X25519 key (HPKE-like, base mode).

The admin encrypts on their own machine to the group's public key; the control plane stores
and ships only the ciphertext; a node of that group, holding the private key
(``--sealing-key``), opens it when it applies the snapshot. Nobody else can: not the control
plane, not a node of another group.

    ephemeral X25519 key pair (e, E); shared = X25519(e, group public key P)
    key = HKDF-SHA256(shared, salt = E || P, info = "signalbox sealed credential v1")
    blob = VERSION || E || nonce(12) || ChaCha20-Poly1305(key, nonce, credential, aad)
    aad = "signalbox/sealed-credential/v1" 0 node group 0 provider id

The associated data binds the blob to its node group and provider: moved onto another
provider (one pointing at the admin's own server, say) it does not open.
"""

from __future__ import annotations

import hashlib
import os
from typing import Final

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from dataplane.keyfile import decode_base64_key

VERSION: Final = b"\x01"
KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_INFO: Final = b"signalbox sealed credential v1"
MIN_SEALED_BYTES: Final = 1 + KEY_BYTES + _NONCE_BYTES + 16
"""An empty credential's blob: the header and the tag."""
MAX_SEALED_BYTES: Final = MIN_SEALED_BYTES + 16 * 1024
"""The largest blob accepted: a credential of up to 16 KiB."""


class SealingError(ValueError):
    """A sealed blob, or a key, that cannot be used; the message names why (never a secret)."""


def key_id(public_key: bytes) -> str:
    """A short fingerprint of a group's public key: which key a blob was sealed to."""
    return hashlib.sha256(b"signalbox sealing key\x00" + public_key).hexdigest()[:16]


def aad(node_group: str, provider_id: str) -> bytes:
    return b"signalbox/sealed-credential/v1\x00" + node_group.encode() + b"\x00" + provider_id.encode()


def public_bytes(private_key: X25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO).derive(shared)


def seal(recipient: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """``plaintext`` sealed to the raw X25519 public key ``recipient``."""
    if len(recipient) != KEY_BYTES:
        raise SealingError(f"public key must be {KEY_BYTES} bytes, got {len(recipient)}")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = public_bytes(ephemeral)
    key = _derive(
        ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient)), ephemeral_public, recipient
    )
    nonce = os.urandom(_NONCE_BYTES)
    return VERSION + ephemeral_public + nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(private_key: X25519PrivateKey, blob: bytes, associated: bytes) -> bytes:
    """The plaintext of ``blob``; ``SealingError`` when it is malformed or does not open."""
    header = 1 + KEY_BYTES + _NONCE_BYTES
    if len(blob) > MAX_SEALED_BYTES:
        raise SealingError(f"larger than {MAX_SEALED_BYTES} bytes")
    if len(blob) < MIN_SEALED_BYTES or blob[:1] != VERSION:
        raise SealingError("not a sealed credential of version 1")
    ephemeral, nonce, ciphertext = blob[1 : 1 + KEY_BYTES], blob[1 + KEY_BYTES : header], blob[header:]
    recipient = public_bytes(private_key)
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        return ChaCha20Poly1305(_derive(shared, ephemeral, recipient)).decrypt(nonce, ciphertext, associated)
    except (InvalidTag, ValueError):
        raise SealingError(
            "does not open with this node's sealing key (another key, group or provider)"
        ) from None


def encode_private_key(private_key: X25519PrivateKey) -> bytes:
    """The private key file's content: PKCS#8 PEM."""
    return private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def load_private_key(data: bytes, source: str) -> X25519PrivateKey:
    """A private key file's content as a key; ``SealingError`` naming ``source``."""
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SealingError(f"{source}: not a PEM private key") from None
    except UnsupportedAlgorithm:
        # A key type or curve the library does not know (no ValueError): no X25519 key either.
        raise SealingError(f"{source}: not an X25519 key") from None
    if not isinstance(key, X25519PrivateKey):
        raise SealingError(f"{source}: not an X25519 key")
    return key


def decode_public_key(text: str, source: str) -> bytes:
    """A public key given as base64 (as ``sealing-key generate`` prints it); ``ValueError``."""
    return decode_base64_key(text, source, f"a {KEY_BYTES}-byte X25519 public key", KEY_BYTES)
