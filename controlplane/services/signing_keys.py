"""Snapshot signing-key rotation and revocation, each published as a new snapshot.

The snapshot that carries the change names every key with its state, so nodes learn
a new key from a statement signed by a key they already trust, and drop a revoked one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.db.models import SigningKey
from controlplane.errors import InvalidArgument, SigningKeyState
from controlplane.keys import list_keys
from controlplane.repositories import nodes as node_repo
from controlplane.repositories import signing_keys as repo
from controlplane.services.base import Caller, UnitOfWork

MAX_KEY_ID_CHARS = 64
MAX_NAMED_NODES = 5


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

    async def revoke(self, caller: Caller, key_id: str, *, force: bool = False) -> tuple[SigningKey, int]:
        """Revoke ``key_id``. Refused while a node still serves a snapshot older than the first
        one signed by the active key (unless ``force``): after the revoke, every snapshot is
        signed only by keys such a node was never told to trust, so it would be stranded on
        its last-known-good until an operator gives it the new key by hand."""
        if not key_id:
            raise InvalidArgument("key_id", "must not be empty")
        if len(key_id) > MAX_KEY_ID_CHARS:
            raise InvalidArgument("key_id", f"must be at most {MAX_KEY_ID_CHARS} characters")
        what = f"revoke signing key {key_id}" + (" (forced)" if force else "")
        async with self.uow.change(caller, what) as change:
            active = await repo.newest_active(change.session)
            if not force and active is not None and active.key_id != key_id:
                behind = await node_repo.behind_key(change.session, active.key_id)
                if behind:
                    named = ", ".join(f"{node} (v{version})" for node, version in behind[:MAX_NAMED_NODES])
                    more = (
                        f" and {len(behind) - MAX_NAMED_NODES} more" if len(behind) > MAX_NAMED_NODES else ""
                    )
                    raise SigningKeyState(
                        f"revoking {key_id} now would strand {len(behind)} node(s) that have not applied a "
                        f"snapshot signed by the active key {active.key_id}: {named}{more}; wait until "
                        "`node list` shows them converged, or pass force to revoke anyway"
                    )
            row = await self.uow.publisher.keyring.revoke(change.session, key_id)
        return row, change.version

    async def list(self) -> Sequence[SigningKey]:
        async with self.uow.read() as session:
            return await list_keys(session)
