"""Tenants' API keys: ``sbx_<key id>_<secret>``, returned once; only a keyed digest is stored.

The key id is the row's UUID (32 hex digits), visible in listings, logs and evidence; the
secret is 256 random bits (``secrets.token_urlsafe(32)``). The database keeps the HMAC-SHA256
of the whole key under the active version of the sealed hash key, and that version
(``controlplane.api_key_hash``, which also says how nodes verify and how versions retire).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane.api_key_hash import HashKeyRing, HashKeyVersion
from controlplane.db.models import ApiKey
from controlplane.errors import InvalidArgument, NotFound
from controlplane.repositories import config as repo
from controlplane.services.base import Caller, UnitOfWork
from dataplane.scopes import ScopeSyntaxError, validate_scopes

API_KEY_PREFIX = "sbx_"
MAX_HASH_KEY_VERSION = 2**31 - 1
"""A version is the ``api_key_hash_key`` row's id, an int32 column: the bound the admin request
check holds every int32 field to already (2**32 - 1 here named a range no request reaches)."""
SECRET_BYTES = 32
"""256 bits of secret per key."""
# The start of the key id: enough to recognise the key in a list; none of the secret.
VISIBLE_PREFIX_CHARS = 12


def new_api_key(key_id: uuid.UUID) -> str:
    """A new key ``sbx_<key id>_<secret>`` for the key id."""
    return f"{API_KEY_PREFIX}{key_id.hex}_{secrets.token_urlsafe(SECRET_BYTES)}"


def secret_digest(secret: str) -> bytes:
    """The SHA-256 of a key of the earlier format (``sbx_<secret>``), as those were stored."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(slots=True)
class ApiKeyService:
    uow: UnitOfWork
    hash_keys: HashKeyRing

    async def create(
        self,
        caller: Caller,
        *,
        tenant: str,
        name: str = "",
        scopes: Sequence[str] = (),
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str, int]:
        """Create a key; returns (row, secret, snapshot version). The secret is not kept."""
        if not tenant:
            raise InvalidArgument("tenant", "must not be empty")
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise InvalidArgument("expires_at", "must be in the future")
        # The grammar the node enforces (dataplane.scopes). A model: scope may name a model
        # not in the registry yet: models can be added later, and until then it matches none.
        try:
            validate_scopes(scopes)
        except ScopeSyntaxError as exc:
            raise InvalidArgument(f"scopes[{exc.index}]", exc.problem) from None
        key_id = uuid.uuid4()
        secret = new_api_key(key_id)
        async with self.uow.change(caller, f"create api key for {tenant}") as change:
            row = await repo.get_tenant(change.session, tenant)
            if row is None:
                raise NotFound("tenant", tenant)
            hasher = await self.hash_keys.active(change.session)
            key = ApiKey(
                id=key_id,
                tenant_id=row.id,
                name=name,
                prefix=secret[:VISIBLE_PREFIX_CHARS],
                secret_hmac=hasher.digest(secret),
                hash_key_version=hasher.version,
                scopes=list(scopes),
                expires_at=expires_at,
            )
            change.session.add(key)
        return key, secret, change.version

    async def list(self, tenant: str = "") -> Sequence[ApiKey]:
        async with self.uow.read() as session:
            tenant_id = None
            if tenant:
                row = await repo.get_tenant(session, tenant)
                if row is None:
                    raise NotFound("tenant", tenant)
                tenant_id = row.id
            return await repo.list_api_keys(session, tenant_id)

    async def delete(self, caller: Caller, key_id: str) -> int:
        async with self.uow.change(caller, f"delete api key {key_id}") as change:
            key = await repo.get_api_key(change.session, key_id)
            if key is None:
                raise NotFound("api key", key_id)
            await change.session.delete(key)
            await change.session.flush()
            # Its version's last usable key gone: the version retires, and the snapshot this
            # change publishes goes out without it (nodes forget it).
            if retired := await self.hash_keys.sweep(change.session):
                change.reason += f"; API-key hash key version {', '.join(map(str, retired))} retired"
        return change.version

    # ---- the hash key's versions (controlplane.api_key_hash) ----
    # Rotate and retire publish a snapshot of every node group, so that the sync streams send
    # every node the new set of live versions at once.

    async def hash_key_versions(self) -> Sequence[HashKeyVersion]:
        async with self.uow.read() as session:
            return await self.hash_keys.versions(session)

    async def rotate_hash_key(self, caller: Caller) -> tuple[HashKeyVersion, Sequence[int], int]:
        """A new active version; returns it, the versions retired with it, the snapshot version."""
        async with self.uow.change(caller, "rotate API-key hash key") as change:
            hasher, retired = await self.hash_keys.rotate(change.session)
            change.force = None  # every group: its nodes get the new version now
            change.reason = f"rotate API-key hash key: version {hasher.version} active" + (
                f", version {', '.join(map(str, retired))} retired" if retired else ""
            )
            versions = await self.hash_keys.versions(change.session)
        return next(v for v in versions if v.version == hasher.version), retired, change.version

    async def retire_hash_key(self, caller: Caller, version: int) -> tuple[HashKeyVersion, int]:
        """Retire ``version`` for good; returns it and the snapshot version."""
        if not 1 <= version <= MAX_HASH_KEY_VERSION:
            raise InvalidArgument("version", f"must be 1..{MAX_HASH_KEY_VERSION} (got {version})")
        async with self.uow.change(caller, f"retire API-key hash key version {version}") as change:
            retired = await self.hash_keys.retire(change.session, version)
            change.force = None  # every group: its nodes forget the version now
        return retired, change.version
