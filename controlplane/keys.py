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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.embedded import data_dir_mode
from controlplane.db.models import SigningKey
from controlplane.errors import InvalidArgument, NotFound, SigningKeyState, SigningKeyUnavailable
from controlplane.repositories import signing_keys as repo
from dataplane.files import read_regular
from dataplane.snapshot.envelope import SNAPSHOT_PAYLOAD_TYPE, STATEMENT_PAYLOAD_TYPE, key_id_for, pae
from signalbox.api.config.v1 import snapshot_pb2

KEK_FILE_NAME = "kek"
KEK_FILE_BYTES = 4096
"""The most read of a KEK file (44 characters of base64, or 32 raw bytes): opened without
blocking and refused when not a regular file, so a FIFO or device named by
``SIGNALBOX_KEK_FILE`` fails the start at once instead of hanging it."""
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


def decode_kek(raw: bytes, source: str) -> Kek:
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


KEK_SOURCE = "--kek (SIGNALBOX_KEK)"
KEK_FILE_SOURCE = "--kek-file (SIGNALBOX_KEK_FILE)"


def load_kek(*, kek_b64: str | None, kek_file: Path | None, data_dir: Path) -> Kek:
    """The KEK from the environment value, the given file, or a generated file under ``data_dir``."""
    # Named as the flag and its variable: the value came from either (an operator who gave
    # --kek-file was told about SIGNALBOX_KEK_FILE, which was never set).
    if kek_b64:
        return decode_kek(kek_b64.encode(), KEK_SOURCE)
    if kek_file is not None:
        try:
            return decode_kek(read_regular(kek_file, KEK_FILE_BYTES), KEK_FILE_SOURCE)
        except OSError as exc:
            raise InvalidArgument(KEK_FILE_SOURCE, f"cannot read {kek_file}: {exc.strerror}") from exc
    path = data_dir / KEK_FILE_NAME
    # The KEK unseals the signing key: its directory is private too (no one else may list
    # it; embedded PostgreSQL's own user may pass through it to its PGDATA).
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(data_dir_mode(data_dir))
    try:
        return generate_kek_file(path)
    except FileExistsError:
        try:
            # Narrowed to 0600 (one generated before files were kept private) on the file
            # opened, never through a symlink planted in its place.
            data = read_regular(path, KEK_FILE_BYTES, nofollow=True, mode=0o600)
        except OSError as exc:
            raise InvalidArgument(str(path), f"cannot read it: {exc.strerror}") from exc
        return decode_kek(data, str(path))


def generate_kek_file(path: Path) -> Kek:
    """A new random KEK written to ``path`` (which must not exist) as base64, mode 0600."""
    # O_EXCL + mode: the file is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key := secrets.token_bytes(32)) + b"\n")
    return Kek(key)


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


def sign_all(signers: Sequence[Signer], payload: bytes) -> snapshot_pb2.SignedEnvelope:
    """One envelope over ``payload`` with a signature by each signer, in order.

    During a rotation the old (retiring) and the new (active) key both sign, so a node
    that trusts either accepts the snapshot."""
    if not signers:
        raise SigningKeyUnavailable("no signing key is active")
    envelope = snapshot_pb2.SignedEnvelope(payload_type=SNAPSHOT_PAYLOAD_TYPE, payload=payload)
    message = pae(SNAPSHOT_PAYLOAD_TYPE, payload)
    for signer in signers:
        envelope.signatures.add(key_id=signer.key_id, sig=signer.private_key.sign(message))
    return envelope


TRUSTED_KEY_STATES = {
    repo.ACTIVE: snapshot_pb2.TRUSTED_KEY_STATE_ACTIVE,
    repo.RETIRING: snapshot_pb2.TRUSTED_KEY_STATE_RETIRING,
    repo.REVOKED: snapshot_pb2.TRUSTED_KEY_STATE_REVOKED,
}
MAX_TRUST_CHAIN = 16
"""Newest trust statements every snapshot carries (eight rotations with their revocations)."""


def sign_statement(
    signers: Sequence[Signer], trusted: Sequence[tuple[str, bytes, str]], *, reason: str, at: datetime
) -> bytes:
    """A ``TrustStatement`` envelope naming every key with its state, signed by ``signers``."""
    if not signers:
        raise SigningKeyUnavailable("no signing key is active")
    statement = snapshot_pb2.TrustStatement(
        reason=reason,
        trusted_keys=[
            snapshot_pb2.TrustedKey(key_id=kid, ed25519_public_key=pub, state=TRUSTED_KEY_STATES[state])
            for kid, pub, state in trusted
        ],
    )
    statement.created_at.FromDatetime(at)
    payload = statement.SerializeToString(deterministic=True)
    envelope = snapshot_pb2.SignedEnvelope(payload_type=STATEMENT_PAYLOAD_TYPE, payload=payload)
    message = pae(STATEMENT_PAYLOAD_TYPE, payload)
    for signer in signers:
        envelope.signatures.add(key_id=signer.key_id, sig=signer.private_key.sign(message))
    return envelope.SerializeToString(deterministic=True)


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


def _new_row(kek: Kek, state: str) -> tuple[SigningKey, Signer]:
    private = Ed25519PrivateKey.generate()
    key_id = key_id_for(private.public_key())
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    row = SigningKey(
        key_id=key_id,
        public_key=private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        encrypted_private_key=kek.seal(raw, key_id.encode()),
        kek_id=kek.id,
        state=state,
    )
    return row, Signer(key_id, private)


async def ensure_signing_key(session: AsyncSession, kek: Kek) -> Signer:
    """The active signing key, generated and sealed on first start. Call inside a transaction.

    Every key that still signs (active and retiring) must open with ``kek``: a control
    plane started with the wrong KEK stops here, not at its first publish."""
    await repo.lock_generation(session)
    rows = await repo.signing(session)
    if rows:
        signers = [_unseal(row, kek) for row in rows]
        return signers[0]
    row, signer = _new_row(kek, repo.ACTIVE)
    await repo.add(session, row)
    return signer


class Keyring:
    """The unsealed signing keys of this control plane, by key id.

    Keys are unsealed once and kept in memory, so a KEK rotation done while this process
    runs does not stop it from signing; a restart then needs the new KEK."""

    def __init__(self, kek: Kek) -> None:
        self._kek = kek
        self._signers: dict[str, Signer] = {}

    def __repr__(self) -> str:
        return f"Keyring(kek={self._kek.id}, keys={sorted(self._signers)})"

    def _get(self, row: SigningKey) -> Signer:
        signer = self._signers.get(row.key_id)
        if signer is None:
            signer = self._signers[row.key_id] = _unseal(row, self._kek)
        return signer

    async def signers(self, session: AsyncSession) -> list[Signer]:
        """The keys that sign the next snapshot: active first, then retiring."""
        return [self._get(row) for row in await repo.signing(session)]

    async def rotate(self, session: AsyncSession) -> tuple[Signer, list[str]]:
        """A new active key; the previous active keys become retiring (they keep signing
        until revoked). Returns the new signer and the ids now retiring."""
        await repo.lock_generation(session)
        rows = await repo.every(session, for_update=True)
        stale = sorted({r.kek_id for r in rows if r.state != repo.REVOKED} - {self._kek.id})
        if stale:
            # Someone re-sealed the keys under a new KEK: a key sealed with this process's
            # KEK could not be opened after the restart that KEK rotation requires.
            raise SigningKeyUnavailable(
                f"signing keys are sealed with KEK {', '.join(stale)}, this control plane runs with "
                f"KEK {self._kek.id}: restart it with the new KEK before rotating"
            )
        retiring = []
        for row in rows:
            if row.state == repo.ACTIVE:
                row.state = repo.RETIRING
                retiring.append(row.key_id)
        row, signer = _new_row(self._kek, repo.ACTIVE)
        await repo.add(session, row)
        self._signers[signer.key_id] = signer
        return signer, retiring

    async def revoke(self, session: AsyncSession, key_id: str) -> SigningKey:
        """Stop signing with ``key_id`` for good. The active key cannot be revoked (rotate first)."""
        await repo.lock_generation(session)
        row = await repo.get(session, key_id)
        if row is None:
            raise NotFound("signing key", key_id)
        if row.state == repo.REVOKED:
            raise SigningKeyState(f"signing key {key_id} is already revoked")
        if row.state == repo.ACTIVE:
            raise SigningKeyState(f"signing key {key_id} is the active key: rotate first, then revoke it")
        row.state = repo.REVOKED
        row.revoked_at = datetime.now(UTC)
        self._signers.pop(key_id, None)
        await session.flush()
        return row


async def list_keys(session: AsyncSession) -> Sequence[SigningKey]:
    return await repo.every(session)


async def reseal_all(session: AsyncSession, old: Kek, new: Kek) -> list[str]:
    """Re-seal every private key (revoked ones too) under ``new``, in the caller's transaction.

    Every key must open with ``old`` first: nothing is changed unless all of them do.
    Returns the key ids re-sealed."""
    await repo.lock_generation(session)
    rows = await repo.every(session, for_update=True)
    opened = [(row, _unseal(row, old)) for row in rows if row.kek_id != new.id]
    for row, signer in opened:
        raw = signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        row.encrypted_private_key = new.seal(raw, row.key_id.encode())
        row.kek_id = new.id
    await session.flush()
    return [row.key_id for row, _ in opened]


async def trusted_keys(session: AsyncSession) -> list[tuple[str, bytes, str]]:
    """(key id, raw public key, state) of every signing key, oldest first."""
    return await repo.trusted(session)
