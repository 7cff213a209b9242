"""Who is calling: the API key in ``authorization: Bearer <key>`` against the snapshot.

Keys are looked up by the SHA-256 of the secret, the only form the snapshot
holds. Every failure is UNAUTHENTICATED, with a message that never echoes the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from dataplane.config.model import ApiKeyEntry, RuntimeConfig, TenantConfig
from dataplane.errors import Unauthenticated

_BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKeyEntry
    tenant: TenantConfig


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer token from gRPC invocation metadata, if any."""
    for name, value in metadata or ():
        if name == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if text[:7].lower() == _BEARER:
                return text[7:].strip() or None
            return None
    return None


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
