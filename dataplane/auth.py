"""Who is calling: an API key, a tenant's JWT or a client certificate, against the snapshot.

``authenticate(config, token, now, peer_certificate)`` is a pure function of what any front
door has (the bearer token of its ``authorization`` header, the TLS peer's certificate as
PEM) and the snapshot: the gRPC front door and an HTTP one call it alike.

- A bearer token shaped like a JWT (three base64url segments) is checked against the
  issuer its ``iss`` names: the ``kid`` must be one of that issuer's keys, the ``alg`` one it
  allows and of that key's family; then PyJWT verifies the signature and ``exp``, ``nbf``,
  ``iss``, ``aud`` (with the issuer's leeway), and ``iat`` must not lie in the future. A
  token whose signature verified is remembered (``_JWT_CACHE``) for as long as the snapshot
  holds the same issuer entry and key; its times are checked on every call.
- Any other bearer token is an API key: ``sbx_<key id>_<secret>``, stored as the HMAC-SHA256
  of the whole key under the control plane's hash key (``controlplane.api_key_hash``; the
  node has the key from its sync stream), or, for keys of the earlier format, its SHA-256.
  Every token takes one path: both digests are computed and both looked up in the snapshot's
  table, whatever the token looks like. A malformed key, an unknown key id and a known id
  with a wrong secret therefore cost the same and get the same answer. The table is keyed by
  the digest, so finding the entry *is* comparing the digests: a MAC covering the key id and
  the secret matches only the entry of that id with that secret, and a caller cannot steer
  the digest of what it sends without the hash key (the dict's hash of a 256-bit digest
  tells nothing about a secret).
- Without a bearer token, a client certificate (already verified by TLS against the node's
  client CA) is looked up by its URI SANs in the snapshot's mappings.

Every refusal is UNAUTHENTICATED with one message, ``authorization: invalid credentials``,
whether a key id, an issuer, a kid or a subject exists or not. The two exceptions name
facts learnt only after the credential proved genuine: an expired (or not yet valid) token
whose signature verified, an expired API key, an inactive tenant. Nothing here logs, and no
message echoes a credential.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from dataplane.config.identity import ALGORITHM_FAMILY, JwtIssuerEntry
from dataplane.config.model import LimitsConfig, RuntimeConfig, TenantConfig
from dataplane.errors import Unauthenticated
from dataplane.scopes import KeyScope

API_KEY: Final = "api_key"
JWT: Final = "jwt"
MTLS: Final = "mtls"

INVALID: Final = "authorization: invalid credentials"
MISSING: Final = "authorization: missing 'Bearer <API key or JWT>' metadata or client certificate"

MAX_TOKEN_BYTES: Final = 4 * 1024
"""The longest bearer token read at all: a JWT with a fair set of claims fits (they are
typically under 2 KiB), and it stays well under gRPC's 8 KiB metadata limit."""
MAX_CLAIM_CHARS: Final = 256
"""The longest subject, tier or metadata value taken from a token."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its tenant (tier as its identity says), scopes and who it is."""

    tenant: TenantConfig
    scope: KeyScope
    method: str
    """``api_key``, ``jwt`` or ``mtls``."""
    key_id: str = ""
    """The API key's id (API keys only)."""
    identity_id: str = ""
    """The snapshot's identity entry (JWT issuer or mTLS mapping) that admitted the caller."""
    issuer: str = ""
    """JWT: the ``iss``."""
    subject: str = ""
    """JWT: the subject claim; mTLS: the URI SAN."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Request metadata from the identity (JWT claim mappings); overrides the caller's own."""
    key_limits: LimitsConfig | None = None
    """The API key's own rate limits and budgets (API keys only)."""

    def evidence(self) -> dict[str, str]:
        """Who called, for the evidence record: never the credential itself."""
        if self.method == API_KEY:
            return {"method": API_KEY, "api_key_id": self.key_id}
        if self.method == JWT:
            return {
                "method": JWT,
                "identity_id": self.identity_id,
                "issuer": self.issuer,
                "subject": self.subject,
            }
        return {"method": MTLS, "identity_id": self.identity_id, "subject": self.subject}


def authenticate(
    config: RuntimeConfig,
    token: str | None,
    now: float,
    peer_certificate: bytes | None = None,
    peer_refusal: str | None = None,
) -> Caller:
    """The caller under ``config`` for a bearer ``token`` or, without one, the TLS peer's
    certificate (PEM); ``Unauthenticated`` otherwise. ``peer_refusal`` says why the TLS
    connection itself is not trusted (no client certificate, or one the client CA did not
    sign, where the node requires one): the call is refused with it whatever it carries."""
    if peer_refusal is not None:
        raise Unauthenticated(peer_refusal)
    if token is not None:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(INVALID)
        if token.count(".") == 2:
            return _jwt_caller(config, token, now)
        return _key_caller(config, token, now)
    if peer_certificate is not None and (config.identities.exact or config.identities.prefixes):
        return _certificate_caller(config, peer_certificate)
    raise Unauthenticated(MISSING)


_NO_HASH_KEYS: Final = (bytes(32),)
"""Stands in for missing hash keys, so a node without one still takes the same path."""


def _key_caller(config: RuntimeConfig, token: str, now: float) -> Caller:
    raw = token.encode("utf-8", "surrogatepass")
    keys = config.api_keys
    # One digest and one lookup per live hash key version, then the earlier format's: every
    # token takes this same path whatever it is (no early exit on a match), so the time
    # says nothing about whether a key id exists or under which version.
    entry = None
    for hash_key in config.api_key_hash_keys or _NO_HASH_KEYS:
        found = keys.get(hmac.digest(hash_key, raw, "sha256"))
        entry = found if found is not None else entry
    legacy = keys.get(hashlib.sha256(raw).digest())
    entry = entry if entry is not None else legacy
    if entry is None:
        raise Unauthenticated(INVALID)
    if entry.expires_at is not None and entry.expires_at <= now:
        raise Unauthenticated("authorization: API key expired")
    caller: Caller | None = config.callers.get(entry.id)
    if caller is None:  # once per key and config: the same entry and tenant give the same caller
        tenant = _active(config, entry.tenant_id)
        caller = config.callers[entry.id] = Caller(
            tenant, entry.scope, API_KEY, key_id=entry.id, key_limits=entry.limits
        )
    return caller


def _active(config: RuntimeConfig, tenant_id: str) -> TenantConfig:
    tenant = config.tenants.get(tenant_id)
    if tenant is None or not tenant.active:
        raise Unauthenticated("authorization: the caller's tenant is not active")
    return tenant


# ---- JWT ----


def _segment(text: str) -> dict[str, Any]:
    """A JWT header or payload segment as a JSON object; ``ValueError`` when it is not one."""
    padded = text + "=" * (-len(text) % 4)
    try:
        value = json.loads(binascii.a2b_base64(padded.replace("-", "+").replace("_", "/"), strict_mode=True))
    except (binascii.Error, ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError("malformed segment") from exc
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


_JWT_CACHE: OrderedDict[bytes, tuple[JwtIssuerEntry, str, object, dict[str, Any]]] = OrderedDict()
_JWT_CACHE_SIZE: Final = 4096
"""Tokens whose signature verified, by SHA-256 of the token (the token itself is not kept):
a client sends the same token for many requests until it expires, and verifying it again
(ES256: ~150 us here) is the whole cost of a JWT call. An entry holds the issuer entry and
key it verified with, and counts only while the snapshot holds those very objects (a new
snapshot compiles new ones, so a changed issuer, key set or audience re-verifies). The
times (``exp``, ``nbf``, ``iat``) and the tenant are checked on every call, hit or not."""


def _jwt_caller(config: RuntimeConfig, token: str, now: float) -> Caller:
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    hit = _JWT_CACHE.get(digest)
    if hit is not None:
        known, known_kid, known_key, known_claims = hit
        if config.identities.issuers.get(known.issuer) is known and known.keys.get(known_kid) is known_key:
            _JWT_CACHE.move_to_end(digest)
            return _timely_caller(config, known, known_claims, now)
        del _JWT_CACHE[digest]
    # PyJWT (and the cryptography backends it loads, ~0.08 s of CPU) only where JWTs are sent.
    import jwt

    head, body, _ = token.split(".")
    try:
        header, claims = _segment(head), _segment(body)
    except ValueError:
        raise Unauthenticated(INVALID) from None
    iss, kid, alg = claims.get("iss"), header.get("kid"), header.get("alg")
    issuer = config.identities.issuers.get(iss) if isinstance(iss, str) else None
    if issuer is None or not isinstance(kid, str) or not isinstance(alg, str):
        raise Unauthenticated(INVALID)
    key = issuer.keys.get(kid)
    if key is None or alg not in issuer.algorithms or ALGORITHM_FAMILY.get(alg) != key.family:
        raise Unauthenticated(INVALID)
    try:
        # Signature, alg, iss and aud by PyJWT; the times below against ``now`` (the request's
        # clock, not PyJWT's), only once the signature verified.
        verified = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=list(issuer.audiences),
            issuer=issuer.issuer,
            options={
                "require": ["exp", "iss", "aud"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError:
        raise Unauthenticated(INVALID) from None
    _JWT_CACHE[digest] = (issuer, kid, key, verified)
    if len(_JWT_CACHE) > _JWT_CACHE_SIZE:
        _JWT_CACHE.popitem(last=False)
    return _timely_caller(config, issuer, verified, now)


def _timely_caller(
    config: RuntimeConfig, issuer: JwtIssuerEntry, verified: Mapping[str, Any], now: float
) -> Caller:
    """The caller of a token whose signature verified, once its times hold at ``now``."""
    leeway = issuer.leeway_s
    exp, nbf, iat = verified["exp"], verified.get("nbf", 0), verified.get("iat", 0)
    if not all(_is_number(v) for v in (exp, nbf, iat)) or iat > now + leeway:
        raise Unauthenticated(INVALID)
    if exp <= now - leeway or nbf > now + leeway:
        # The token is genuine, only untimely: saying so reveals nothing.
        raise Unauthenticated("authorization: token expired or not yet valid")
    return _claims_caller(config, issuer, verified)


def _is_number(value: object) -> bool:
    # Finite only: NaN compares false with every time (an exp of NaN would never expire, an
    # nbf of NaN never lie ahead) and an exp of Infinity never expires; JSON parsing lets both
    # through (``NaN``, ``Infinity``, ``1e999``).
    # (An int is finite however large: math.isfinite would overflow converting it.)
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if 0 < len(text) <= MAX_CLAIM_CHARS and text.isprintable() else None


def _claims_caller(config: RuntimeConfig, issuer: JwtIssuerEntry, claims: Mapping[str, Any]) -> Caller:
    subject = _claim(claims, issuer.subject_claim)
    if subject is None:
        raise Unauthenticated(INVALID)
    tenant = _active(config, issuer.tenant_id)
    if issuer.tier_claim:
        tier = _claim(claims, issuer.tier_claim)
        if tier is not None and tier != tenant.tier:
            tenant = replace(tenant, tier=tier)
    metadata: dict[str, str] = {}
    for key, claim in issuer.metadata_claims:
        value = _claim(claims, claim)
        if value is not None:
            metadata[key] = value
    return Caller(
        tenant,
        issuer.scope,
        JWT,
        identity_id=issuer.id,
        issuer=issuer.issuer,
        subject=subject,
        metadata=metadata,
    )


# ---- client certificates ----

_SAN_CACHE: OrderedDict[bytes, tuple[str, ...]] = OrderedDict()
_SAN_CACHE_SIZE: Final = 4096


def uri_sans(pem: bytes) -> tuple[str, ...]:
    """The URI SANs of a PEM certificate (parsed once per distinct certificate, then cached)."""
    cached = _SAN_CACHE.get(pem)
    if cached is not None:
        return cached
    try:
        cert = x509.load_pem_x509_certificate(pem)
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        uris = tuple(ext.value.get_values_for_type(x509.UniformResourceIdentifier))  # type: ignore[attr-defined]
    except (ValueError, x509.ExtensionNotFound):
        uris = ()
    _SAN_CACHE[pem] = uris
    while len(_SAN_CACHE) > _SAN_CACHE_SIZE:
        _SAN_CACHE.popitem(last=False)
    return uris


def _certificate_caller(config: RuntimeConfig, pem: bytes) -> Caller:
    matches = {}
    for uri in uri_sans(pem):
        entry = config.identities.san(uri)
        if entry is not None:
            matches[entry.tenant_id] = (entry, uri)
    # No mapping, or SANs of several tenants (ambiguous): refused alike.
    if len(matches) != 1:
        raise Unauthenticated(INVALID)
    entry, uri = next(iter(matches.values()))
    tenant = _active(config, entry.tenant_id)
    return Caller(tenant, entry.scope, MTLS, identity_id=entry.id, subject=uri)
