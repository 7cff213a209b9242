"""Rotation and retirement of the API-key hash key (``controlplane.api_key_hash``), each
published as a new snapshot of every node group, so that the sync streams send every node
the new set of live versions at once."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.api_key_hash import HashKeyRing, HashKeyVersion
from controlplane.errors import InvalidArgument
from controlplane.services.base import Caller, UnitOfWork

MAX_VERSION = 2**32 - 1


@dataclass(slots=True)
class HashKeyService:
    uow: UnitOfWork
    ring: HashKeyRing

    async def versions(self) -> list[HashKeyVersion]:
        async with self.uow.read() as session:
            return await self.ring.versions(session)

    async def rotate(self, caller: Caller) -> tuple[HashKeyVersion, list[int], int]:
        """A new active version; returns it, the versions retired with it, the snapshot version."""
        async with self.uow.change(caller, "rotate API-key hash key") as change:
            hasher, retired = await self.ring.rotate(change.session)
            change.force = None  # every group: its nodes get the new version now
            change.reason = f"rotate API-key hash key: version {hasher.version} active" + (
                f", version {', '.join(map(str, retired))} retired" if retired else ""
            )
            versions = await self.ring.versions(change.session)
        return next(v for v in versions if v.version == hasher.version), retired, change.version

    async def retire(self, caller: Caller, version: int) -> tuple[HashKeyVersion, int]:
        """Retire ``version`` for good; returns it and the snapshot version."""
        if not 1 <= version <= MAX_VERSION:
            raise InvalidArgument("version", f"must be 1..{MAX_VERSION} (got {version})")
        async with self.uow.change(caller, f"retire API-key hash key version {version}") as change:
            retired = await self.ring.retire(change.session, version)
            change.force = None  # every group: its nodes forget the version now
        return retired, change.version
