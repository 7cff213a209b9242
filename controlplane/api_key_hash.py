"""The API-key hash key: API keys are stored as HMAC-SHA256 under a key sealed with the KEK.

An API key is ``sbx_<key id>_<secret>`` (``controlplane.services.keys``); the database keeps
``HMAC-SHA256(K, whole key)`` where ``K`` is 32 random bytes generated on first start and kept
only sealed under the KEK (AES-256-GCM, like the signing keys), in the one-row table
``api_key_hash_key``.

What it protects: a database dump (or backup) without the KEK cannot be used to test guessed
keys. Every place in the database that could verify a key holds a MAC under ``K``: the
``api_keys`` rows and the snapshots (which carry the same digests). Without ``K`` a digest
says nothing about which key it belongs to.

How nodes verify: a node needs ``K`` to compute the MAC of a presented key. ``K`` does not
travel in the snapshot, since snapshots are stored in the database (history, rollback, pins),
and would hand ``K`` to whoever dumps it. The control plane sends ``K`` to each node on its
authenticated sync stream (``ServerMessage.api_key_hash_key``, mutual TLS with the node's
enrolled certificate), outside any stored message; the node keeps it in memory and in its data
dir (0600) so that a restart without the control plane still verifies keys. A node without
``K`` refuses new-format keys like unknown ones (old-format keys, stored as plain SHA-256 by
earlier versions, keep working). An air-gapped node is given the file with
``--api-key-hash-key-file`` (written by ``signalbox controlplane export-api-key-hash-key``).

The trade-off, stated: a node holds ``K`` in clear, as it holds its TLS private key; a stolen
node lets its thief test guesses against a dump, which for a 256-bit secret is still hopeless.
The control plane never needs to verify a key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ApiKeyHashKey
from controlplane.errors import SigningKeyUnavailable
from controlplane.keys import Kek

_AAD = b"signalbox api-key hash key v1"
KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class ApiKeyHasher:
    """The unsealed API-key hash key."""

    key: bytes = field(repr=False)

    def digest(self, api_key: str) -> bytes:
        """HMAC-SHA256 of the whole key (``sbx_<id>_<secret>``): what the database and the
        snapshot keep, and what a node computes from a presented key."""
        return hmac.digest(self.key, api_key.encode(), hashlib.sha256)


def _unseal(row: ApiKeyHashKey, kek: Kek) -> ApiKeyHasher:
    if row.kek_id != kek.id:
        raise SigningKeyUnavailable(
            f"the API-key hash key was sealed with KEK {row.kek_id}, but the configured KEK is {kek.id}"
        )
    try:
        return ApiKeyHasher(kek.unseal(bytes(row.sealed_key), _AAD))
    except InvalidTag as exc:
        raise SigningKeyUnavailable("the API-key hash key cannot be decrypted with the KEK") from exc


async def ensure_api_key_hasher(session: AsyncSession, kek: Kek) -> ApiKeyHasher:
    """The hash key, generated on first start; replicas starting at once agree on one."""
    await session.execute(
        insert(ApiKeyHashKey)
        .values(id=1, sealed_key=kek.seal(secrets.token_bytes(KEY_BYTES), _AAD), kek_id=kek.id)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = await session.scalar(select(ApiKeyHashKey).where(ApiKeyHashKey.id == 1))
    assert row is not None
    return _unseal(row, kek)


async def reseal_api_key_hash_key(session: AsyncSession, old: Kek, new: Kek) -> bool:
    """Re-seal the hash key under ``new`` (in the caller's transaction); False when there is none."""
    row = await session.scalar(select(ApiKeyHashKey).where(ApiKeyHashKey.id == 1).with_for_update())
    if row is None or row.kek_id == new.id:
        return False
    hasher = _unseal(row, old)
    row.sealed_key = new.seal(hasher.key, _AAD)
    row.kek_id = new.id
    await session.flush()
    return True
