"""The snapshot signing key and the key-encryption key (KEK) that seals it at rest.

The Ed25519 private key is generated on first start and stored only as
AES-256-GCM ciphertext (nonce || ciphertext, key id as associated data). The
KEK comes from ``SIGNALBOX_KEK`` (base64 of 32 bytes), from ``SIGNALBOX_KEK_FILE``,
or from a file generated under the data dir with 0600 permissions. Neither the
KEK nor the private key is ever logged, returned, or put in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import SigningKey
from controlplane.errors import InvalidArgument, SigningKeyUnavailable
from controlplane.repositories import signing_keys as repo
from dataplane.snapshot.envelope import SNAPSHOT_PAYLOAD_TYPE, key_id_for, pae
from signalbox.api.config.v1 import snapshot_pb2

KEK_FILE_NAME = "kek"
_NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class Kek:
    """A 32-byte AES-256-GCM key-encryption key."""

    key: bytes = field(repr=False)

    @property
    def id(self) -> str:
        """A fingerprint that identifies the KEK without revealing it."""
        return hashlib.sha256(b"signalbox-kek-id\x00" + self.key).hexdigest()[:16]

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        nonce, ciphertext = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
        return AESGCM(self.key).decrypt(nonce, ciphertext, aad)


def _decode_kek(raw: bytes, source: str) -> Kek:
    stripped = raw.strip()
    if len(raw) == 32 and len(stripped) != 44:
        return Kek(raw)
    try:
        key = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(source, "must be base64 of 32 bytes") from exc
    if len(key) != 32:
        raise InvalidArgument(source, f"must be 32 bytes, got {len(key)}")
    return Kek(key)


def load_kek(*, kek_b64: str | None, kek_file: Path | None, data_dir: Path) -> Kek:
    """The KEK from the environment value, the given file, or a generated file under ``data_dir``."""
    if kek_b64:
        return _decode_kek(kek_b64.encode(), "SIGNALBOX_KEK")
    if kek_file is not None:
        try:
            return _decode_kek(kek_file.read_bytes(), "SIGNALBOX_KEK_FILE")
        except OSError as exc:
            raise InvalidArgument("SIGNALBOX_KEK_FILE", f"cannot read {kek_file}: {exc.strerror}") from exc
    path = data_dir / KEK_FILE_NAME
    # The KEK unseals the signing key: its directory is private too.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    try:
        # O_EXCL + mode: the file is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)  # one generated before files were kept private
        return _decode_kek(path.read_bytes(), str(path))
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)) + b"\n")
    return _decode_kek(path.read_bytes(), str(path))


@dataclass(frozen=True, slots=True)
class Signer:
    """The active signing key, unsealed in memory."""

    key_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_bytes(self) -> bytes:
        return self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def sign(self, payload: bytes) -> snapshot_pb2.SignedEnvelope:
        """Sign the exact ``payload`` bytes into a DSSE-style envelope."""
        envelope = snapshot_pb2.SignedEnvelope(payload_type=SNAPSHOT_PAYLOAD_TYPE, payload=payload)
        envelope.signatures.add(
            key_id=self.key_id, sig=self.private_key.sign(pae(SNAPSHOT_PAYLOAD_TYPE, payload))
        )
        return envelope


def _unseal(row: SigningKey, kek: Kek) -> Signer:
    if row.kek_id != kek.id:
        raise SigningKeyUnavailable(
            f"signing key {row.key_id} was sealed with KEK {row.kek_id}, but the configured KEK is {kek.id}"
        )
    try:
        raw = kek.unseal(row.encrypted_private_key, row.key_id.encode())
    except InvalidTag as exc:
        raise SigningKeyUnavailable(f"signing key {row.key_id} cannot be decrypted with the KEK") from exc
    return Signer(row.key_id, Ed25519PrivateKey.from_private_bytes(raw))


async def ensure_signing_key(session: AsyncSession, kek: Kek) -> Signer:
    """The active signing key, generated and sealed on first start. Call inside a transaction."""
    await repo.lock_generation(session)
    row = await repo.newest_active(session)
    if row is not None:
        return _unseal(row, kek)
    private = Ed25519PrivateKey.generate()
    key_id = key_id_for(private.public_key())
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    await repo.add(
        session,
        SigningKey(
            key_id=key_id,
            public_key=private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            encrypted_private_key=kek.seal(raw, key_id.encode()),
            kek_id=kek.id,
            active=True,
        ),
    )
    return Signer(key_id, private)


async def trusted_keys(session: AsyncSession) -> list[tuple[str, bytes]]:
    """(key id, raw public key) of every active signing key, oldest first."""
    return await repo.trusted(session)
