"""Turn the current database state into a new signed, stored, announced snapshot.

Runs inside the admin call's transaction, after its change: if the candidate
does not compile with the data plane's own compiler, nothing is signed and the
whole transaction rolls back. Serialising, compiling, hashing and signing run
in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Snapshot
from controlplane.errors import ConfigRejected
from controlplane.keys import Keyring, Signer, sign_all, trusted_keys
from controlplane.repositories import snapshots as snapshot_repo
from controlplane.snapshots.build import build_snapshot
from controlplane.snapshots.compiler import SnapshotInvalid, compile_now
from dataplane.config.model import RuntimeConfig
from signalbox.api.config.v1 import snapshot_pb2


@dataclass(frozen=True, slots=True)
class PublishedSnapshot:
    """A stored snapshot: its version, payload hash, the exact envelope bytes, and
    the config its payload compiles to (as a node will compile it)."""

    version: int
    sha256: bytes
    envelope: bytes
    created_at: datetime
    config: RuntimeConfig = field(repr=False, compare=False)


def check(payload: bytes) -> RuntimeConfig:
    """Compile the exact payload bytes as a node would; ``ConfigRejected`` names the path.

    CPU-heavy: call it off the event loop.
    """
    try:
        return compile_now(payload)
    except SnapshotInvalid as exc:
        raise ConfigRejected(exc.path, exc.problem) from exc


@dataclass(frozen=True, slots=True)
class _Sealed:
    payload: bytes
    sha256: bytes
    envelope: bytes
    config: RuntimeConfig


def _seal(snapshot: snapshot_pb2.Snapshot, signers: list[Signer]) -> _Sealed:
    # Serialized once: these exact bytes are checked, hashed, signed and stored.
    payload = snapshot.SerializeToString(deterministic=True)
    config = check(payload)
    envelope = sign_all(signers, payload).SerializeToString(deterministic=True)
    return _Sealed(payload, hashlib.sha256(payload).digest(), envelope, config)


@dataclass(frozen=True, slots=True)
class SnapshotPublisher:
    """Builds, checks, signs, stores and announces snapshots."""

    keyring: Keyring
    ttl: timedelta
    scope: snapshot_pb2.Scope
    retention: int = 100
    """How many of the newest versions are kept; older ones go unless a node still runs
    them or they were exported as a pin. At least 1: the newest is never pruned."""

    def __post_init__(self) -> None:
        if self.retention < 1:
            raise ValueError("snapshot retention must keep at least 1 version")

    async def publish(self, session: AsyncSession, *, actor: str, reason: str) -> PublishedSnapshot:
        """Store the next version; the caller holds the config lock and commits."""
        # Version and hash only: the previous envelope (megabytes at fleet size) is not needed.
        previous = await snapshot_repo.head(session)
        version = (previous[0] if previous is not None else 0) + 1
        now = datetime.now(UTC)
        snapshot = await build_snapshot(
            session,
            version=version,
            previous_hash=previous[1] if previous is not None else b"",
            created_at=now,
            expires_at=now + self.ttl,
            scope=self.scope,
            trusted=await trusted_keys(session),
        )
        # Every key that still signs: during a rotation, the retiring key beside the new one.
        signers = await self.keyring.signers(session)
        sealed = await asyncio.to_thread(_seal, snapshot, signers)
        await snapshot_repo.add(
            session,
            Snapshot(
                version=version,
                envelope=sealed.envelope,
                sha256=sealed.sha256,
                previous_hash=snapshot.previous_hash,
                signing_key_id=signers[0].key_id,
                created_at=now,
                created_by=actor,
                reason=reason,
            ),
        )
        # Bounded history, in the same transaction: a rolled-back publish prunes nothing.
        await snapshot_repo.prune(session, newest=version, keep_last=self.retention)
        # Delivered at commit, to every replica LISTENing, this one included.
        await snapshot_repo.announce(session, version)
        return PublishedSnapshot(version, sealed.sha256, sealed.envelope, now, sealed.config)
