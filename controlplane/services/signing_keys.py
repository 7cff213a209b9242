"""Snapshot signing-key rotation and revocation, each published as a new snapshot.

The snapshot that carries the change names every key with its state, so nodes learn
a new key from a statement signed by a key they already trust, and drop a revoked one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import SigningKey, TrustStatement
from controlplane.errors import InvalidArgument
from controlplane.keys import list_keys, sign_statement
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
            await self._state(change.session, change.reason)
        return row, retiring, change.version

    async def _state(self, session: AsyncSession, reason: str) -> None:
        """Record the keys' new states as a trust statement signed by every key that signs now
        (during a rotation the old one too): the chain a node that missed this change, or an
        air-gapped site, follows from a key it trusts."""
        signers = await self.uow.publisher.keyring.signers(session)
        trusted = await repo.trusted(session)
        now = datetime.now(UTC)
        envelope = sign_statement(signers, trusted, reason=reason, at=now)
        await repo.add_statement(session, TrustStatement(envelope=envelope, created_at=now, reason=reason))

    async def revoke(self, caller: Caller, key_id: str) -> tuple[SigningKey, int]:
        """Revoke ``key_id``. A node that had not applied the rotation's dual-signed snapshot
        is not stranded: every snapshot carries the trust statements (rotation, then this
        revocation) that lead from the old key to the active one."""
        if not key_id:
            raise InvalidArgument("key_id", "must not be empty")
        if len(key_id) > MAX_KEY_ID_CHARS:
            raise InvalidArgument("key_id", f"must be at most {MAX_KEY_ID_CHARS} characters")
        async with self.uow.change(caller, f"revoke signing key {key_id}") as change:
            row = await self.uow.publisher.keyring.revoke(change.session, key_id)
            await self._state(change.session, f"revoke signing key {key_id}")
        return row, change.version

    async def list(self) -> Sequence[SigningKey]:
        async with self.uow.read() as session:
            return await list_keys(session)
