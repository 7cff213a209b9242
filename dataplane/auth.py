"""Who is calling: the caller's API key (a front door reads it from its wire) against the snapshot.

Keys are looked up by the SHA-256 of the secret, the only form the snapshot
holds. Every failure is UNAUTHENTICATED, with a message that never echoes the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dataplane.config.model import ApiKeyEntry, RuntimeConfig, TenantConfig
from dataplane.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKeyEntry
    tenant: TenantConfig


def authenticate(config: RuntimeConfig, token: str | None, now: float) -> Caller:
    """The caller for ``token`` under ``config``, or ``Unauthenticated``."""
    if token is None:
        raise Unauthenticated("authorization: missing 'Bearer <API key>' metadata")
    entry = config.api_keys.get(hashlib.sha256(token.encode()).digest())
    if entry is None:
        raise Unauthenticated("authorization: invalid API key")
    if entry.expires_at is not None and entry.expires_at <= now:
        raise Unauthenticated("authorization: API key expired")
    tenant = config.tenants.get(entry.tenant_id)
    if tenant is None or not tenant.active:
        raise Unauthenticated("authorization: the key's tenant is not active")
    return Caller(entry, tenant)
