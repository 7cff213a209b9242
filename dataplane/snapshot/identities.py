"""A snapshot's caller identities (JWT issuers, mTLS SAN mappings) compiled once per snapshot.

The JWKS of every issuer is parsed here, when a snapshot is compiled, never per request:
``IdentityIndex`` holds ready public keys by issuer and key id. The control plane runs the
same checks (``check_jwt_issuer``, ``check_mtls_mapping``) before it stores an entry, so a
signed snapshot always compiles; every problem names the field it is about.

Rules (what the checks enforce):

- algorithms are asymmetric only (``RS*``, ``PS*``, ``ES*``, ``EdDSA``): never ``none``,
  never HMAC (a verifier given a public key as an HMAC secret is the classic forgery);
- a JWKS holds public keys only (no ``d``, no symmetric ``oct`` key), each with a unique
  ``kid``; RSA keys are at least 2048 bits; EC keys on P-256, P-384 or P-521; OKP keys
  Ed25519 or Ed448;
- an mTLS mapping is a URI (``scheme://...``), exact or a prefix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from dataplane.config.identity import (
    ALGORITHM_FAMILY,
    NO_IDENTITIES,
    IdentityIndex,
    JwtIssuerEntry,
    JwtKey,
    MtlsEntry,
)
from dataplane.config.model import TenantConfig
from dataplane.errors import SnapshotInvalid, shown
from dataplane.scopes import KeyScope, ScopeSyntaxError, validate_scopes
from signalbox.api.config.v1 import snapshot_pb2

MIN_RSA_BITS: Final = 2048
MAX_JWKS_BYTES: Final = 64 * 1024
MAX_KEYS: Final = 32
MAX_LEEWAY_S: Final = 300
MAX_TEXT: Final = 256
MAX_METADATA_CLAIMS: Final = 16
MAX_URI_CHARS: Final = 2048


class IdentityInvalid(ValueError):
    """An identity entry breaks a rule; ``field`` names where (relative to the entry)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _text(value: str, field: str, *, required: bool = True) -> str:
    if required and not value:
        raise IdentityInvalid(field, "must not be empty")
    if len(value) > MAX_TEXT:
        raise IdentityInvalid(field, f"is {len(value)} characters, more than {MAX_TEXT}")
    if any(not c.isprintable() or c.isspace() for c in value):
        raise IdentityInvalid(field, f"{shown(value)} contains whitespace or control characters")
    return value


def _scopes(scopes: Sequence[str], field: str) -> KeyScope:
    try:
        validate_scopes(scopes)
    except ScopeSyntaxError as exc:
        raise IdentityInvalid(f"{field}[{exc.index}]", exc.problem) from None
    return KeyScope.parse(scopes)


def parse_jwks(text: str, field: str = "jwks_json") -> dict[str, JwtKey]:
    """The public keys of a JWKS document by ``kid``, or ``IdentityInvalid`` naming the rule."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_JWKS_BYTES:
        raise IdentityInvalid(field, f"is {size} bytes, more than {MAX_JWKS_BYTES}")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise IdentityInvalid(field, f"is not valid JSON ({shown(str(exc), 80)})") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise IdentityInvalid(field, 'must be a JWKS: a JSON object with a "keys" array')
    if not document["keys"]:
        raise IdentityInvalid(f"{field}.keys", "must hold at least one key")
    if len(document["keys"]) > MAX_KEYS:
        raise IdentityInvalid(f"{field}.keys", f"holds {len(document['keys'])} keys, more than {MAX_KEYS}")
    keys: dict[str, JwtKey] = {}
    for i, jwk in enumerate(document["keys"]):
        where = f"{field}.keys[{i}]"
        if not isinstance(jwk, dict):
            raise IdentityInvalid(where, "must be a JSON object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise IdentityInvalid(f"{where}.kid", "must be a non-empty string (tokens name their key by kid)")
        _text(kid, f"{where}.kid")
        if kid in keys:
            raise IdentityInvalid(f"{where}.kid", f"duplicate key id {shown(kid)}")
        kty = jwk.get("kty")
        if kty == "oct":
            raise IdentityInvalid(f"{where}.kty", "symmetric keys are not allowed (public keys only)")
        if kty not in ("RSA", "EC", "OKP"):
            raise IdentityInvalid(f"{where}.kty", f"unsupported key type {shown(str(kty))} (RSA, EC, OKP)")
        if "d" in jwk or "p" in jwk:
            raise IdentityInvalid(where, "holds private key material; upload public keys only")
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise IdentityInvalid(f"{where}.use", f"{shown(str(use))} is not a signing key")
        # Here, not at the top: PyJWT costs ~0.08 s of CPU to import, and most snapshots
        # hold no JWT issuer.
        from jwt import PyJWK
        from jwt.exceptions import PyJWTError

        try:
            parsed = PyJWK(jwk)
        # PyJWTError: InvalidKeyError (no curve, an unknown one, a point of the wrong size, an
        # "alg" of another key type) is not a PyJWKError, its sibling.
        except (PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise IdentityInvalid(where, f"is not a valid {kty} public key ({shown(str(exc), 80)})") from None
        family = _family(kty, jwk, parsed.key, where)
        keys[kid] = JwtKey(kid, family, parsed.key)
    return keys


def _family(kty: str, jwk: Mapping[str, Any], key: Any, where: str) -> str:
    if kty == "RSA":
        bits = int(key.key_size)
        if bits < MIN_RSA_BITS:
            raise IdentityInvalid(f"{where}.n", f"RSA key of {bits} bits; at least {MIN_RSA_BITS} required")
        return "RSA"
    crv = str(jwk.get("crv", ""))
    if kty == "EC":
        if crv not in ("P-256", "P-384", "P-521"):
            raise IdentityInvalid(f"{where}.crv", f"unsupported curve {shown(crv)} (P-256, P-384, P-521)")
        return crv
    if crv not in ("Ed25519", "Ed448"):
        raise IdentityInvalid(f"{where}.crv", f"unsupported curve {shown(crv)} (Ed25519, Ed448)")
    return "OKP"


def check_algorithms(algorithms: Iterable[str], field: str = "algorithms") -> frozenset[str]:
    algs = list(algorithms)
    if not algs:
        raise IdentityInvalid(field, f"must list at least one algorithm ({', '.join(ALGORITHM_FAMILY)})")
    for i, alg in enumerate(algs):
        if alg.lower() == "none":
            raise IdentityInvalid(f"{field}[{i}]", "'none' is never allowed: tokens must be signed")
        if alg.upper().startswith("HS"):
            raise IdentityInvalid(
                f"{field}[{i}]", f"{shown(alg)}: HMAC algorithms are not allowed (asymmetric keys only)"
            )
        if alg not in ALGORITHM_FAMILY:
            raise IdentityInvalid(
                f"{field}[{i}]", f"unknown algorithm {shown(alg)} (allowed: {', '.join(ALGORITHM_FAMILY)})"
            )
    return frozenset(algs)


def check_jwt_issuer(
    entry_id: str, tenant_id: str, issuer: snapshot_pb2.JwtIssuer, prefix: str = ""
) -> JwtIssuerEntry:
    """``issuer`` compiled; ``IdentityInvalid`` naming the field (``prefix`` + field name)."""
    _text(issuer.issuer, f"{prefix}issuer")
    if not issuer.audiences:
        raise IdentityInvalid(f"{prefix}audiences", "must name at least one audience")
    for i, aud in enumerate(issuer.audiences):
        _text(aud, f"{prefix}audiences[{i}]")
    algorithms = check_algorithms(issuer.algorithms, f"{prefix}algorithms")
    keys = parse_jwks(issuer.jwks_json, f"{prefix}jwks_json")
    families = {ALGORITHM_FAMILY[a] for a in algorithms}
    for kid, key in keys.items():
        if key.family not in families:
            raise IdentityInvalid(
                f"{prefix}jwks_json",
                f"key {shown(kid)} ({key.family}) cannot verify any allowed algorithm"
                f" ({', '.join(sorted(algorithms))})",
            )
    if issuer.leeway_seconds > MAX_LEEWAY_S:
        raise IdentityInvalid(f"{prefix}leeway_seconds", f"at most {MAX_LEEWAY_S}")
    subject = _text(issuer.subject_claim or "sub", f"{prefix}subject_claim")
    tier = _text(issuer.tier_claim, f"{prefix}tier_claim", required=False)
    if len(issuer.metadata_claims) > MAX_METADATA_CLAIMS:
        raise IdentityInvalid(f"{prefix}metadata_claims", f"at most {MAX_METADATA_CLAIMS} entries")
    metadata = []
    for key_name, claim in sorted(issuer.metadata_claims.items()):
        _text(key_name, f"{prefix}metadata_claims")
        _text(claim, f"{prefix}metadata_claims[{key_name}]")
        metadata.append((key_name, claim))
    scope = _scopes(issuer.scopes, f"{prefix}scopes")
    return JwtIssuerEntry(
        entry_id,
        tenant_id,
        issuer.issuer,
        frozenset(issuer.audiences),
        algorithms,
        keys,
        issuer.leeway_seconds,
        subject,
        tier,
        tuple(metadata),
        scope,
    )


def check_mtls_mapping(
    entry_id: str, tenant_id: str, mapping: snapshot_pb2.MtlsMapping, prefix: str = ""
) -> MtlsEntry:
    uri = mapping.uri
    if not uri:
        raise IdentityInvalid(f"{prefix}uri", "must not be empty")
    if len(uri) > MAX_URI_CHARS:
        raise IdentityInvalid(f"{prefix}uri", f"is {len(uri)} characters, more than {MAX_URI_CHARS}")
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme.isascii() or not scheme.isalpha() or not rest:
        raise IdentityInvalid(f"{prefix}uri", f"{shown(uri)} is not a URI such as spiffe://domain/path")
    if any(c.isspace() or not c.isprintable() for c in uri):
        raise IdentityInvalid(f"{prefix}uri", "contains whitespace or control characters")
    return MtlsEntry(entry_id, tenant_id, uri, mapping.prefix, _scopes(mapping.scopes, f"{prefix}scopes"))


def compile_identities(
    identities: Iterable[snapshot_pb2.TenantIdentity], tenants: Mapping[str, TenantConfig]
) -> IdentityIndex:
    """The index of a snapshot's identities; ``SnapshotInvalid`` with the entry's path."""
    issuers: dict[str, JwtIssuerEntry] = {}
    exact: dict[str, MtlsEntry] = {}
    prefixes: dict[str, MtlsEntry] = {}
    for i, ident in enumerate(identities):
        path = f"$.identities[{i}]"
        if ident.tenant_id not in tenants:
            raise SnapshotInvalid(f"{path}.tenant_id", f"unknown tenant {ident.tenant_id!r}")
        kind = ident.WhichOneof("kind")
        try:
            if kind == "jwt":
                issuer = check_jwt_issuer(ident.id, ident.tenant_id, ident.jwt)
                if issuer.issuer in issuers:
                    raise IdentityInvalid("issuer", f"duplicate issuer {shown(issuer.issuer)}")
                issuers[issuer.issuer] = issuer
            elif kind == "mtls":
                mapping = check_mtls_mapping(ident.id, ident.tenant_id, ident.mtls)
                table = prefixes if mapping.prefix else exact
                if mapping.uri in table:
                    raise IdentityInvalid("uri", f"duplicate mapping of {shown(mapping.uri)}")
                table[mapping.uri] = mapping
            else:
                raise IdentityInvalid("kind", "neither jwt nor mtls")
        except IdentityInvalid as exc:
            where = f"{path}.{kind}.{exc.field}" if kind else f"{path}.{exc.field}"
            raise SnapshotInvalid(where, exc.problem) from exc
    if not issuers and not exact and not prefixes:
        return NO_IDENTITIES
    ordered = tuple(sorted(prefixes.values(), key=lambda m: len(m.uri), reverse=True))
    return IdentityIndex(issuers, exact, ordered)
