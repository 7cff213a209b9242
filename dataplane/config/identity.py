"""Caller identities besides API keys, compiled: JWT issuers with parsed keys, mTLS mappings.

Built once per snapshot by ``dataplane.snapshot.identities``; read per request by
``dataplane.auth``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dataplane.scopes import KeyScope

ALGORITHM_FAMILY: Final[Mapping[str, str]] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "P-256",
    "ES384": "P-384",
    "ES512": "P-521",
    "EdDSA": "OKP",
}
"""The algorithms an issuer may allow, with the key family each needs."""


@dataclass(frozen=True, slots=True)
class JwtKey:
    kid: str
    family: str
    """``RSA``, ``P-256``/``P-384``/``P-521`` or ``OKP``: which algorithms may use the key."""
    key: Any
    """The ``cryptography`` public key object PyJWT verifies with."""


@dataclass(frozen=True, slots=True)
class JwtIssuerEntry:
    id: str
    tenant_id: str
    issuer: str
    audiences: frozenset[str]
    algorithms: frozenset[str]
    keys: Mapping[str, JwtKey]
    """By ``kid``."""
    leeway_s: int
    subject_claim: str
    tier_claim: str
    metadata_claims: tuple[tuple[str, str], ...]
    """(request metadata key, claim name)."""
    scope: KeyScope


@dataclass(frozen=True, slots=True)
class MtlsEntry:
    id: str
    tenant_id: str
    uri: str
    prefix: bool
    scope: KeyScope


@dataclass(frozen=True, slots=True)
class IdentityIndex:
    """Every identity of a snapshot, ready for lookups."""

    issuers: Mapping[str, JwtIssuerEntry] = field(default_factory=dict)
    """By ``iss``."""
    exact: Mapping[str, MtlsEntry] = field(default_factory=dict)
    """mTLS mappings by exact URI."""
    prefixes: tuple[MtlsEntry, ...] = ()
    """mTLS prefix mappings, longest first (the most specific wins)."""

    def san(self, uri: str) -> MtlsEntry | None:
        """The mapping of one URI SAN: an exact one, else the longest matching prefix."""
        entry = self.exact.get(uri)
        if entry is not None:
            return entry
        for p in self.prefixes:
            if uri.startswith(p.uri):
                return p
        return None


NO_IDENTITIES: Final = IdentityIndex()
