"""The API-key hash key: API keys are stored as HMAC-SHA256 under a key sealed with the KEK.

An API key is ``sbx_<key id>_<secret>`` (``controlplane.services.keys``); the database keeps
``HMAC-SHA256(K, whole key)`` where ``K`` is 32 random bytes kept only sealed under the KEK
(AES-256-GCM, like the signing keys), in the table ``api_key_hash_key``.

What it protects: a database dump (or backup) without the KEK cannot be used to test guessed
keys. Every place in the database that could verify a key holds a MAC under ``K``: the
``api_keys`` rows and the snapshots (which carry the same digests). Without ``K`` a digest
says nothing about which key it belongs to.

Versions (rotation): ``K`` has versions, 1 being the key generated on first start. A key
cannot be re-hashed (its clear text is never kept), so a rotation does not replace ``K``: it
adds version ``n + 1``, under which keys issued from then on are hashed (``api_keys`` records
each key's version); keys issued before keep working under theirs. States::

    active     the newest version not retired: new keys are hashed under it
    retiring   an older version that usable keys (not revoked, not expired) still use
    retired    no usable key uses it any more: no longer sent to nodes (they forget it);
               once retired explicitly, or by a change that leaves it unused, its key is
               destroyed (``sealed_key`` NULL) and it can never verify anything again

At most ``MAX_LIVE_VERSIONS`` versions are live (active or retiring): a node computes one
HMAC per live version for every key it checks.

How nodes verify: a node needs the live versions of ``K`` to compute the MACs of a presented
key. ``K`` does not travel in the snapshot, since snapshots are stored in the database
(history, rollback, pins), and would hand ``K`` to whoever dumps it. The control plane sends
every live version to each node on its authenticated sync stream
(``ServerMessage.api_key_hash_keys``, and the active one alone in the older
``api_key_hash_key`` field for nodes of earlier versions; mutual TLS with the node's enrolled
certificate), outside any stored message; the node keeps them in memory and in its data dir
(0600) so that a restart without the control plane still verifies keys. A node without ``K``
refuses new-format keys like unknown ones (old-format keys, stored as plain SHA-256 by earlier
versions, keep working). An air-gapped node is given the file with
``--api-key-hash-key-file`` (written by ``signalbox controlplane export-api-key-hash-key``).

The trade-off, stated: a node holds ``K`` in clear, as it holds its TLS private key; a stolen
node lets its thief test guesses against a dump, which for a 256-bit secret is still hopeless.
The control plane never needs to verify a key itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import ApiKey, ApiKeyHashKey
from controlplane.errors import HashKeyState, NotFound, SigningKeyUnavailable
from controlplane.keys import Kek

_AAD = b"signalbox api-key hash key v1"
KEY_BYTES = 32
MAX_LIVE_VERSIONS = 4
"""Live (active or retiring) versions at most: each costs a node one HMAC per key check."""

ACTIVE = "active"
RETIRING = "retiring"
RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class ApiKeyHasher:
    """One unsealed version of the API-key hash key."""

    key: bytes = field(repr=False)
    version: int = 1

    def digest(self, api_key: str) -> bytes:
        """HMAC-SHA256 of the whole key (``sbx_<id>_<secret>``): what the database and the
        snapshot keep, and what a node computes from a presented key."""
        return hmac.digest(self.key, api_key.encode(), hashlib.sha256)


@dataclass(frozen=True, slots=True)
class HashKeyVersion:
    """A version as an admin sees it: never its key."""

    version: int
    state: str
    """``active``, ``retiring`` or ``retired``."""
    created_at: datetime
    retired_at: datetime | None
    """When its key was destroyed; None while it exists (a ``retired`` version not yet
    swept still has it, but is no longer sent to nodes)."""
    usable_keys: int
    """API keys hashed under it that are not revoked and not expired."""


def _aad(version: int) -> bytes:
    # The version is bound to its sealed key: a blob moved to another row does not open.
    return _AAD if version == 1 else _AAD + b" version %d" % version


def _unseal(row: ApiKeyHashKey, kek: Kek) -> ApiKeyHasher:
    if row.sealed_key is None:
        raise HashKeyState(f"API-key hash key version {row.id} is retired: its key was destroyed")
    if row.kek_id != kek.id:
        raise SigningKeyUnavailable(
            f"the API-key hash key (version {row.id}) was sealed with KEK {row.kek_id}, "
            f"but the configured KEK is {kek.id}"
        )
    try:
        return ApiKeyHasher(kek.unseal(bytes(row.sealed_key), _aad(row.id)), row.id)
    except InvalidTag as exc:
        raise SigningKeyUnavailable(
            f"the API-key hash key (version {row.id}) cannot be decrypted with the KEK"
        ) from exc


async def _usable_keys(session: AsyncSession) -> dict[int, int]:
    """Per version: the keys hashed under it that still authenticate (revoked keys are deleted)."""
    rows = await session.execute(
        select(ApiKey.hash_key_version, func.count())
        .where(ApiKey.hash_key_version.is_not(None))
        .where(or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > func.now()))
        .group_by(ApiKey.hash_key_version)
    )
    return {int(version): int(count) for version, count in rows if version is not None}


def _states(rows: Sequence[ApiKeyHashKey], usable: dict[int, int]) -> dict[int, str]:
    """The state of each version (rows in version order)."""
    kept = [row.id for row in rows if row.retired_at is None]
    active = max(kept, default=0)
    return {
        row.id: ACTIVE
        if row.id == active
        else RETIRING
        if row.retired_at is None and usable.get(row.id, 0) > 0
        else RETIRED
        for row in rows
    }


class HashKeyRing:
    """The versions of the hash key, unsealed on demand and cached (a version's key never
    changes; a retired one is never handed out again)."""

    def __init__(self, kek: Kek) -> None:
        self._kek = kek
        self._unsealed: dict[tuple[int, bytes], ApiKeyHasher] = {}

    def _hasher(self, row: ApiKeyHashKey) -> ApiKeyHasher:
        # Keyed by the sealed bytes too: a row read inside a change that is rolled back must
        # not stand for a version of that number made later.
        cache_key = (row.id, bytes(row.sealed_key or b""))
        hasher = self._unsealed.get(cache_key)
        if hasher is None:
            hasher = self._unsealed[cache_key] = _unseal(row, self._kek)
        return hasher

    async def _rows(self, session: AsyncSession, *, lock: bool = False) -> Sequence[ApiKeyHashKey]:
        query = select(ApiKeyHashKey).order_by(ApiKeyHashKey.id)
        return (await session.scalars(query.with_for_update() if lock else query)).all()

    async def ensure(self, session: AsyncSession) -> ApiKeyHasher:
        """The active version; version 1 is generated on first start (replicas starting at
        once agree on one)."""
        await session.execute(
            insert(ApiKeyHashKey)
            .values(
                id=1, sealed_key=self._kek.seal(secrets.token_bytes(KEY_BYTES), _aad(1)), kek_id=self._kek.id
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        return await self.active(session)

    async def active(self, session: AsyncSession) -> ApiKeyHasher:
        """The version new keys are hashed under (in the caller's transaction)."""
        row = await session.scalar(
            select(ApiKeyHashKey)
            .where(ApiKeyHashKey.retired_at.is_(None))
            .order_by(ApiKeyHashKey.id.desc())
            .limit(1)
        )
        if row is None:
            raise HashKeyState("no API-key hash key: the control plane has not started on this database yet")
        return self._hasher(row)

    async def live(self, session: AsyncSession) -> list[ApiKeyHasher]:
        """The versions nodes hold: the active one and every retiring one, oldest first."""
        rows = await self._rows(session)
        states = _states(rows, await _usable_keys(session))
        return [self._hasher(row) for row in rows if states[row.id] != RETIRED]

    async def versions(self, session: AsyncSession) -> list[HashKeyVersion]:
        rows = await self._rows(session)
        usable = await _usable_keys(session)
        states = _states(rows, usable)
        return [
            HashKeyVersion(row.id, states[row.id], row.created_at, row.retired_at, usable.get(row.id, 0))
            for row in rows
        ]

    async def rotate(self, session: AsyncSession) -> tuple[ApiKeyHasher, list[int]]:
        """A new active version (in the caller's transaction), and the versions that retired
        with it: the previous one when no usable key uses it. Refused when
        ``MAX_LIVE_VERSIONS`` would be exceeded."""
        rows = await self._rows(session, lock=True)
        stale = sorted({row.kek_id for row in rows if row.retired_at is None} - {self._kek.id})
        if stale:
            # rotate-kek re-sealed the versions: one sealed with this process's KEK would not
            # open after the restart that KEK rotation requires.
            raise SigningKeyUnavailable(
                f"API-key hash key versions are sealed with KEK {', '.join(stale)}, this control plane "
                f"runs with KEK {self._kek.id}: restart it with the new KEK before rotating"
            )
        usable = await _usable_keys(session)
        states = _states(rows, usable)
        live = [row.id for row in rows if states[row.id] != RETIRED]
        if len(live) >= MAX_LIVE_VERSIONS:
            used = ", ".join(f"version {v}: {usable.get(v, 0)} keys" for v in live if states[v] == RETIRING)
            raise HashKeyState(
                f"{len(live)} API-key hash key versions are live, at most {MAX_LIVE_VERSIONS}: revoke the "
                f"keys of a retiring version first ({used})"
            )
        version = max((row.id for row in rows), default=0) + 1
        key = secrets.token_bytes(KEY_BYTES)
        session.add(
            ApiKeyHashKey(id=version, sealed_key=self._kek.seal(key, _aad(version)), kek_id=self._kek.id)
        )
        await session.flush()
        # Not cached: the change may still be rolled back, and a version of that number
        # made again later (the cache is keyed by the sealed bytes, which would differ).
        return ApiKeyHasher(key, version), await self.sweep(session)

    async def retire(self, session: AsyncSession, version: int) -> HashKeyVersion:
        """Retire ``version`` for good (its key destroyed); refused while it is active or
        usable keys use it. Retiring a retired version changes nothing."""
        rows = await self._rows(session, lock=True)
        row = next((r for r in rows if r.id == version), None)
        if row is None:
            raise NotFound("api key hash key version", str(version))
        usable = await _usable_keys(session)
        state = _states(rows, usable)[version]
        if state == ACTIVE:
            raise HashKeyState(
                f"version {version} is the active API-key hash key version: rotate first, then retire it "
                "once no usable key uses it"
            )
        if state == RETIRING:
            raise HashKeyState(
                f"version {version} is still used by {usable[version]} usable API keys (not revoked, not "
                "expired): revoke them, or let them expire, first"
            )
        self._forget(row)
        await session.flush()
        return HashKeyVersion(row.id, RETIRED, row.created_at, row.retired_at, 0)

    async def sweep(self, session: AsyncSession) -> list[int]:
        """Retire for good every version no usable key uses any more but the active one (in
        the caller's transaction); returns their numbers."""
        rows = await self._rows(session, lock=True)
        states = _states(rows, await _usable_keys(session))
        swept = [row for row in rows if states[row.id] == RETIRED and row.retired_at is None]
        for row in swept:
            self._forget(row)
        if swept:
            await session.flush()
        return [row.id for row in swept]

    def _forget(self, row: ApiKeyHashKey) -> None:
        self._unsealed.pop((row.id, bytes(row.sealed_key or b"")), None)
        row.retired_at = datetime.now(UTC)
        row.sealed_key = None


async def ensure_api_key_hasher(session: AsyncSession, kek: Kek) -> ApiKeyHasher:
    """The active version, version 1 generated on first start."""
    return await HashKeyRing(kek).ensure(session)


async def reseal_api_key_hash_key(session: AsyncSession, old: Kek, new: Kek) -> list[int]:
    """Re-seal every version not retired under ``new`` (in the caller's transaction); returns
    the versions re-sealed."""
    rows = (
        await session.scalars(
            select(ApiKeyHashKey)
            .where(ApiKeyHashKey.retired_at.is_(None))
            .order_by(ApiKeyHashKey.id)
            .with_for_update()
        )
    ).all()
    resealed = []
    for row in rows:
        if row.kek_id == new.id:
            continue
        hasher = _unseal(row, old)
        row.sealed_key = new.seal(hasher.key, _aad(row.id))
        row.kek_id = new.id
        resealed.append(row.id)
    await session.flush()
    return resealed


class LiveHashKeys:
    """The live versions as the sync streams send them: read again from the database once
    per new snapshot version of a group (a rotation or a retirement is committed with the
    snapshot that publishes it), not once per node."""

    def __init__(self, ring: HashKeyRing, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._ring = ring
        self._sessions = sessions
        self._lock = asyncio.Lock()
        self._loaded: dict[str, tuple[int, tuple[ApiKeyHasher, ...]]] = {}

    async def for_snapshot(self, group: str, version: int) -> tuple[ApiKeyHasher, ...]:
        """The versions to send with ``group``'s snapshot ``version`` (or an older one)."""
        loaded = self._loaded.get(group)
        if loaded is not None and loaded[0] >= version:
            return loaded[1]
        async with self._lock:
            loaded = self._loaded.get(group)
            if loaded is None or loaded[0] < version:
                async with self._sessions() as session, session.begin():
                    live = tuple(await self._ring.live(session))
                self._loaded[group] = loaded = (version, live)
        return loaded[1]

    def cached(self, group: str) -> tuple[ApiKeyHasher, ...]:
        """What was last sent to ``group`` (for the size of a message already sent)."""
        loaded = self._loaded.get(group)
        return loaded[1] if loaded is not None else ()
