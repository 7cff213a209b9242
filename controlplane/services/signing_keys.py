"""Snapshot signing-key rotation and revocation, each published as a new snapshot.

The snapshot that carries the change names every key with its state, so nodes learn
a new key from a statement signed by a key they already trust, and drop a revoked one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.db.models import SigningKey
from controlplane.errors import InvalidArgument
from controlplane.keys import list_keys
from controlplane.repositories import signing_keys as repo
from controlplane.services.base import Caller, UnitOfWork

MAX_KEY_ID_CHARS = 64


@dataclass(slots=True)
class SigningKeyService:
    uow: UnitOfWork

    async def rotate(self, caller: Caller) -> tuple[SigningKey, list[str], int]:
        """A new active key; returns (its row, the ids now retiring, snapshot version)."""
        keyring = self.uow.publisher.keyring
        async with self.uow.change(caller, "rotate signing key") as change:
            signer, retiring = await keyring.rotate(change.session)
            row = await repo.get(change.session, signer.key_id)
            assert row is not None
            change.reason = f"rotate signing key: {signer.key_id} active, retiring {', '.join(retiring)}"
        return row, retiring, change.version

    async def revoke(self, caller: Caller, key_id: str) -> tuple[SigningKey, int]:
        if not key_id:
            raise InvalidArgument("key_id", "must not be empty")
        if len(key_id) > MAX_KEY_ID_CHARS:
            raise InvalidArgument("key_id", f"must be at most {MAX_KEY_ID_CHARS} characters")
        async with self.uow.change(caller, f"revoke signing key {key_id}") as change:
            row = await self.uow.publisher.keyring.revoke(change.session, key_id)
        return row, change.version

    async def list(self) -> Sequence[SigningKey]:
        async with self.uow.read() as session:
            return await list_keys(session)
