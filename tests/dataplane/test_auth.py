"""``dataplane.auth.authenticate`` in-process: the rules an issuer's configuration must satisfy
before a node (or the control plane) accepts it. (API key timing: ``test_api_key_format``.)"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from dataplane.auth import authenticate
from dataplane.config.model import RuntimeConfig, Scope, TenantConfig
from dataplane.errors import SnapshotInvalid, Unauthenticated
from dataplane.snapshot.identities import (
    IdentityInvalid,
    check_jwt_issuer,
    check_mtls_mapping,
    compile_identities,
)
from signalbox.api.config.v1 import snapshot_pb2
from tests.fixtures.jwks import AUDIENCE, TestIdp


def _issuer(**fields: object) -> snapshot_pb2.JwtIssuer:
    base: dict[str, object] = {
        "issuer": "https://idp.example.test",
        "audiences": [AUDIENCE],
        "algorithms": ["ES256", "RS256"],
        "jwks_json": TestIdp().jwks(),
    }
    base.update(fields)
    return snapshot_pb2.JwtIssuer(**base)  # type: ignore[arg-type]


def _jwks(*keys: dict[str, object]) -> str:
    return json.dumps({"keys": list(keys)})


def _ec_jwk() -> dict[str, object]:
    return dict(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True))


SMALL_RSA = dict(
    RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), as_dict=True
    )
)
PRIVATE_EC = dict(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True))

BAD_ISSUERS: dict[str, tuple[snapshot_pb2.JwtIssuer, str, str]] = {
    "JWKS not JSON": (_issuer(jwks_json="{not json"), "jwks_json", "is not valid JSON"),
    "JWKS without keys": (_issuer(jwks_json='{"keys": []}'), "jwks_json.keys", "at least one key"),
    "RSA key under 2048 bits": (
        _issuer(jwks_json=_jwks(SMALL_RSA | {"kid": "small"})),
        "jwks_json.keys[0].n",
        "RSA key of 1024 bits; at least 2048 required",
    ),
    "private key material": (
        _issuer(jwks_json=_jwks(PRIVATE_EC | {"kid": "p"})),
        "jwks_json.keys[0]",
        "private key material",
    ),
    "symmetric key": (
        _issuer(jwks_json=_jwks({"kty": "oct", "k": "c2VjcmV0", "kid": "s"})),
        "jwks_json.keys[0].kty",
        "symmetric keys are not allowed",
    ),
    "key without kid": (
        _issuer(jwks_json=_jwks(_ec_jwk())),
        "jwks_json.keys[0].kid",
        "must be a non-empty string",
    ),
    "duplicate kid": (
        _issuer(jwks_json=_jwks(_ec_jwk() | {"kid": "a"}, _ec_jwk() | {"kid": "a"})),
        "jwks_json.keys[1].kid",
        "duplicate key id",
    ),
    # Keys PyJWT refuses with InvalidKeyError, which is no PyJWKError: each escaped the check.
    "OKP key without a curve": (
        _issuer(algorithms=["EdDSA"], jwks_json=_jwks({"kty": "OKP", "x": "AA", "kid": "o"})),
        "jwks_json.keys[0]",
        "is not a valid OKP public key",
    ),
    "EC key on an unknown curve": (
        _issuer(jwks_json=_jwks(_ec_jwk() | {"crv": "P-999", "kid": "e"})),
        "jwks_json.keys[0]",
        "is not a valid EC public key",
    ),
    "EC point of the wrong size": (
        _issuer(jwks_json=_jwks(_ec_jwk() | {"x": "AA", "kid": "e"})),
        "jwks_json.keys[0]",
        "is not a valid EC public key",
    ),
    "RSA key naming an HMAC algorithm": (
        _issuer(jwks_json=_jwks(json.loads(TestIdp().jwks())["keys"][1] | {"alg": "HS256"})),
        "jwks_json.keys[0]",
        "is not a valid RSA public key",
    ),
    "alg none": (_issuer(algorithms=["ES256", "none"]), "algorithms[1]", "'none' is never allowed"),
    "HMAC": (_issuer(algorithms=["HS256"]), "algorithms[0]", "HMAC algorithms are not allowed"),
    "no algorithm": (_issuer(algorithms=[]), "algorithms", "at least one algorithm"),
    "a key no allowed algorithm can use": (
        _issuer(algorithms=["ES256"]),
        "jwks_json",
        "cannot verify any allowed",
    ),
    "no audience": (_issuer(audiences=[]), "audiences", "at least one audience"),
    "no issuer": (_issuer(issuer=""), "issuer", "must not be empty"),
    "leeway too long": (_issuer(leeway_seconds=3600), "leeway_seconds", "at most 300"),
    "bad scope": (_issuer(scopes=["region:eu"]), "scopes[0]", "unknown scope kind"),
}


@pytest.mark.parametrize("case", list(BAD_ISSUERS))
def test_an_issuer_breaking_a_rule_is_refused_naming_the_field(case: str) -> None:
    issuer, field, problem = BAD_ISSUERS[case]
    with pytest.raises(IdentityInvalid) as refused:
        check_jwt_issuer("id", "t", issuer, prefix="issuer.")
    assert refused.value.field == f"issuer.{field}"
    assert problem in refused.value.problem


def test_mtls_mappings_must_be_uris() -> None:
    for uri, problem in (
        ("", "must not be empty"),
        ("billing", "is not a URI"),
        ("spiffe://a b", "whitespace"),
    ):
        with pytest.raises(IdentityInvalid) as refused:
            check_mtls_mapping("id", "t", snapshot_pb2.MtlsMapping(uri=uri))
        assert refused.value.field == "uri"
        assert problem in refused.value.problem
    assert check_mtls_mapping("id", "t", snapshot_pb2.MtlsMapping(uri="spiffe://example.test/x")).uri


def test_a_snapshot_with_two_tenants_claiming_one_issuer_does_not_compile() -> None:
    tenants = {t: TenantConfig(t, t) for t in ("a", "b")}
    issuer = _issuer()
    entries = [snapshot_pb2.TenantIdentity(id=t, tenant_id=t, jwt=issuer) for t in ("a", "b")]
    with pytest.raises(SnapshotInvalid) as refused:
        compile_identities(entries, tenants)
    assert refused.value.path == "$.identities[1].jwt.issuer"
    with pytest.raises(SnapshotInvalid) as unknown:
        compile_identities([snapshot_pb2.TenantIdentity(id="x", tenant_id="zz", jwt=issuer)], tenants)
    assert unknown.value.path == "$.identities[0].tenant_id"


def test_token_times_are_judged_by_the_callers_clock_with_the_issuers_leeway() -> None:
    idp = TestIdp()
    issuer = _issuer(leeway_seconds=30, jwks_json=idp.jwks(), issuer=idp.issuer)
    index = compile_identities(
        [snapshot_pb2.TenantIdentity(id="j", tenant_id="t", jwt=issuer)], {"t": TenantConfig("t", "t")}
    )
    config = RuntimeConfig(1, b"", 0.0, None, Scope(), {"t": TenantConfig("t", "t")}, {}, {}, {}, {})
    config = replace(config, identities=index)
    token = idp.token(iat=1_000, nbf=1_000, exp=2_000)
    assert authenticate(config, token, 1_500.0).subject == "alice@example.test"
    assert authenticate(config, token, 2_029.0).issuer == idp.issuer  # within the leeway
    assert authenticate(config, token, 971.0).method == "jwt"
    early = idp.token(iat=900, nbf=1_000, exp=2_000)
    for untimely, now in ((token, 2_030.0), (early, 969.0)):
        with pytest.raises(Unauthenticated, match=r"^authorization: token expired or not yet valid$"):
            authenticate(config, untimely, now)
    # An iat beyond the leeway, or a time claim that is not a number: refused like any bad token.
    for bad in (idp.token(iat=1_600, nbf=1_000, exp=2_000), idp.token(exp="soon")):
        with pytest.raises(Unauthenticated, match=r"^authorization: invalid credentials$"):
            authenticate(config, bad, 1_500.0)


def test_a_verified_token_is_judged_again_against_each_new_snapshot() -> None:
    """Verified tokens are remembered (a client sends one token many times), but only for the
    issuer entry and key they verified with: a snapshot whose issuer dropped that key, changed
    its audience or whose tenant is inactive refuses the same token at once."""
    idp = TestIdp()
    tenants = {"t": TenantConfig("t", "t")}

    def config(issuer: snapshot_pb2.JwtIssuer, tenant: TenantConfig | None = None) -> RuntimeConfig:
        tenants = {"t": tenant or TenantConfig("t", "t")}
        index = compile_identities([snapshot_pb2.TenantIdentity(id="j", tenant_id="t", jwt=issuer)], tenants)
        base = RuntimeConfig(1, b"", 0.0, None, Scope(), tenants, {}, {}, {}, {})
        return replace(base, identities=index)

    first = config(_issuer(jwks_json=idp.jwks(), issuer=idp.issuer))
    token = idp.token(iat=1_000, nbf=1_000, exp=2_000)
    for _ in range(3):
        assert authenticate(first, token, 1_500.0).subject == "alice@example.test"
    # The same issuer compiled again (a new snapshot, same keys): still admitted.
    assert (
        authenticate(config(_issuer(jwks_json=idp.jwks(), issuer=idp.issuer)), token, 1_500.0).method == "jwt"
    )

    rotated = TestIdp(idp.issuer)  # the IdP rotated its keys: kid ec-1 is another key now
    other_audience = _issuer(jwks_json=idp.jwks(), issuer=idp.issuer, audiences=["someone-else"])
    for changed in (config(_issuer(jwks_json=rotated.jwks(), issuer=idp.issuer)), config(other_audience)):
        with pytest.raises(Unauthenticated, match=r"^authorization: invalid credentials$"):
            authenticate(changed, token, 1_500.0)
    inactive = config(_issuer(jwks_json=idp.jwks(), issuer=idp.issuer), replace(tenants["t"], active=False))
    with pytest.raises(Unauthenticated, match="tenant is not active"):
        authenticate(inactive, token, 1_500.0)
    # And back on the first snapshot, the times are still checked on every call.
    with pytest.raises(Unauthenticated, match="token expired or not yet valid"):
        authenticate(first, token, 2_500.0)
    assert authenticate(first, token, 1_600.0).subject == "alice@example.test"


def test_a_token_whose_time_claims_are_not_finite_is_refused() -> None:
    # NaN compares false with every time, so an exp of NaN never expired (nor an nbf of NaN
    # ever lay in the future); an exp of Infinity never expires either.
    idp = TestIdp()
    issuer = _issuer(jwks_json=idp.jwks(), issuer=idp.issuer)
    index = compile_identities(
        [snapshot_pb2.TenantIdentity(id="j", tenant_id="t", jwt=issuer)], {"t": TenantConfig("t", "t")}
    )
    config = RuntimeConfig(1, b"", 0.0, None, Scope(), {"t": TenantConfig("t", "t")}, {}, {}, {}, {})
    config = replace(config, identities=index)
    for claims in (
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"exp": 2_000, "nbf": float("nan")},
        {"exp": 2_000, "iat": float("nan")},
    ):
        token = idp.token(**{"iat": 1_000, "nbf": 1_000, **claims})
        with pytest.raises(Unauthenticated, match=r"^authorization: invalid credentials$"):
            authenticate(config, token, 1_500.0)
    # An integer is finite however large: judged as a time, not overflowing a float.
    with pytest.raises(Unauthenticated, match=r"^authorization: token expired or not yet valid$"):
        authenticate(config, idp.token(iat=1_000, exp=2_000, nbf=10**400), 1_500.0)
    assert authenticate(config, idp.token(iat=1_000, nbf=1_000, exp=10**400), 1_500.0).method == "jwt"
