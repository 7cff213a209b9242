"""Property-based fuzzing of the Admin API's configuration writes not covered by
``test_admin_fuzz``: bulk import, limits, caller identities (JWKS documents, audiences,
claims, SAN URIs), node groups, partial updates of tenants, providers and models, and
governance profiles. Real control plane, real PostgreSQL, real gRPC.

Every answer: a defined status with a bounded message naming the field or rule; a refused
write leaves every configuration row as it was (a digest of the tables); the server serves
after; and an accepted write reads back as written.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.fuzz.admin_harness import (
    chars,
    check_write,
    json_values,
    mostly,
    names,
    odd_text,
    small_enum,
    str_maps,
    uint32,
    uint64,
)
from tests.fuzz.conftest import ADMIN_EXAMPLES

OK = grpc.StatusCode.OK

# ---- import files ----

_rfc3339 = st.sampled_from(
    ["2099-01-01T00:00:00Z", "2099-01-01T00:00:00+14:00", "2000-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"]
) | st.text(chars, max_size=25)
_import_objects = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.just("tenant"), "name": names},
        optional={"tier": odd_text | json_values, "labels": str_maps | json_values, "extra": json_values},
    ),
    st.fixed_dictionaries(
        {"kind": st.just("api_key"), "tenant": st.sampled_from(["acme", "t-new"]) | odd_text},
        optional={
            "name": odd_text | json_values,
            "scopes": st.lists(st.sampled_from(["op:chat", "model:small"]) | odd_text, max_size=3)
            | json_values,
            "expires_at": _rfc3339 | json_values,
        },
    ),
    st.dictionaries(st.sampled_from(["kind", "name", "tenant"]) | st.text(chars, max_size=6), json_values),
    json_values,
)
_lines = st.lists(
    st.one_of(
        st.builds(json.dumps, _import_objects).map(str.encode),
        st.builds(
            lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass"), _import_objects
        ),
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"",
                b"   ",
                b'{"kind": "tenant", "name": "t\\u0000"}',
                b'{"kind": "tenant", "name": "t\\ud800"}',
                b'{"kind": "tenant", "name": "t-new"}',
                b'{"kind": "api_key", "tenant": "t-new", "name": "k"}',
                b'{"kind": "tenant", "name": "acme"}',
                b"[" * 100_000,
                b'{"kind": "tenant", "name": "' + b"n" * 300 + b'"}',
                b'{"kind": "api_key", "tenant": "acme", "expires_at": "2099-01-01T00:00:00"}',
                b"\xff\xfe\x00",
                b'{"kind": "tenant", "name": 1e999999}',
            ]
        ),
    ),
    max_size=6,
)
jsonl = st.one_of(
    st.builds(lambda lines, sep: sep.join(lines), _lines, st.sampled_from([b"\n", b"\r\n", b"\r", b"\x85"])),
    st.binary(max_size=200),
)


@settings(max_examples=ADMIN_EXAMPLES)
@given(data=jsonl)
async def test_import_config(seeded: Admin, control_plane: RunningControlPlane, data: bytes) -> None:
    async def tenants() -> list[str]:
        return sorted(t.name for t in (await seeded.ListTenants(admin_pb2.ListTenantsRequest())).tenants)

    before = await tenants()
    code, reply = await check_write(
        seeded,
        control_plane.database_url,
        lambda: seeded.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data)),
    )
    if code == OK:
        assert len(await tenants()) == len(before) + reply.tenants
        for key in reply.keys:
            assert key.secret.startswith("sbx_")


# ---- limits ----

_limit = st.none() | st.integers(0, 10**12)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=mostly(
        {
            "tenant": st.sampled_from(["acme"]),
            "key_id": st.sampled_from(["", "KEY", "OTHER"]),
            "requests_per_minute": _limit,
            "tokens_per_minute": _limit,
            "budget_day_nanos": _limit,
            "budget_month_nanos": _limit,
            "on_unreachable": st.none() | st.sampled_from([0, 1]),
        },
        {
            "tenant": odd_text,
            "key_id": st.sampled_from(["00000000-0000-0000-0000-000000000000"]) | odd_text,
            "requests_per_minute": uint64,
            "tokens_per_minute": uint64,
            "budget_day_nanos": uint64,
            "budget_month_nanos": uint64,
            "on_unreachable": small_enum,
        },
    ),
    clear=st.booleans(),
)
async def test_set_and_clear_limits(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any], clear: bool
) -> None:
    tenant = fields.pop("tenant")
    key = fields.pop("key_id")
    if key in ("KEY", "OTHER"):
        # One of acme's keys, or one of another tenant's (as unknown to acme as none).
        owner = "acme"
        if key == "OTHER":
            owner = (
                await seeded.CreateTenant(admin_pb2.CreateTenantRequest(name=f"o-{uuid.uuid4().hex}"))
            ).id
        made = await seeded.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=owner, name="limited"))
        key = made.key.id
    request = admin_pb2.SetLimitsRequest(
        tenant=tenant, key_id=key, **{k: v for k, v in fields.items() if v is not None}
    )
    code, reply = await check_write(seeded, control_plane.database_url, lambda: seeded.SetLimits(request))
    if code == OK:
        got = await seeded.GetLimits(admin_pb2.GetLimitsRequest(tenant=tenant, key_id=key))
        assert got.limits == reply.limits
        for name, value in fields.items():
            if value is not None:
                assert getattr(got.limits, name) == value
    if clear:
        clear_request = admin_pb2.ClearLimitsRequest(tenant=tenant, key_id=key)
        await check_write(seeded, control_plane.database_url, lambda: seeded.ClearLimits(clear_request))
    get = admin_pb2.GetLimitsRequest(tenant=tenant, key_id=key)
    await check_write(seeded, control_plane.database_url, lambda: seeded.GetLimits(get))


# ---- caller identities ----


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_REAL_KEYS = [
    ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True),
    ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True),
    RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(), as_dict=True
    ),
    RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=3, key_size=1024).public_key(), as_dict=True
    ),
    OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key(), as_dict=True),
    ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True),  # a private key
]
_b64_values = st.one_of(
    st.binary(max_size=70).map(_b64),
    st.sampled_from(["", "AA", "AQAB", "!!!", "=", "A" * 5000, "_-_-"]),
    json_values,
)
_jwk = st.one_of(
    st.builds(
        lambda base, extra: {**base, **extra},
        st.sampled_from(_REAL_KEYS),
        st.fixed_dictionaries(
            {"kid": st.sampled_from(["k1", "k2"]) | odd_text | json_values},
            optional={
                "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none", "PS512", "ES256K"])
                | json_values,
                "use": st.sampled_from(["sig", "enc"]) | json_values,
                "crv": st.sampled_from(["P-256", "P-521", "Ed448", "X25519", "secp256k1", ""]) | json_values,
                "kty": st.sampled_from(["RSA", "EC", "OKP", "oct"]) | json_values,
            },
        ),
    ),
    st.fixed_dictionaries(
        {"kid": st.sampled_from(["k1", "k2"]) | odd_text},
        optional={
            "kty": st.sampled_from(["RSA", "EC", "OKP", "oct", "", "rsa"]) | json_values,
            "crv": st.sampled_from(["P-256", "P-384", "P-521", "Ed25519", "Ed448", "X448", "P-999"])
            | json_values,
            "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256"]) | json_values,
            "n": _b64_values,
            "e": _b64_values,
            "x": _b64_values,
            "y": _b64_values,
            "k": _b64_values,
            "d": _b64_values,
        },
    ),
    json_values,
)
jwks_documents = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries({"keys": st.lists(_jwk, max_size=3)})),
    st.builds(
        json.dumps, st.fixed_dictionaries({"keys": st.lists(st.sampled_from(_REAL_KEYS[:1]), max_size=40)})
    ),
    st.builds(json.dumps, json_values),
    st.text(chars, max_size=60),
    st.sampled_from(
        ['{"keys": ' + "[" * 5000 + "]" * 5000 + "}", '{"keys": [' + "1," * 40_000 + "1]}", "x" * 70_000]
    ),
)
_algorithms = st.lists(
    st.sampled_from(["RS256", "ES256", "ES384", "EdDSA", "PS256", "HS256", "none", "NONE", "hs512"])
    | odd_text,
    max_size=3,
)
_claim_maps = st.one_of(
    str_maps, st.dictionaries(st.sampled_from(["team", "dept"]), st.sampled_from(["grp", "x y"]))
)
_scopes = st.lists(
    st.sampled_from(["op:chat", "model:small", "task:x", "op:*", "bogus"]) | odd_text, max_size=3
)


async def _check_added(
    admin: Admin,
    control_plane: RunningControlPlane,
    add: Callable[[], Awaitable[Any]],
    listing: Callable[[], Awaitable[Any]],
    entries: str,
) -> Any:
    """An identity added (its reply, in the ``entries`` of the listing since) or refused
    (None, nothing written)."""
    code, reply = await check_write(admin, control_plane.database_url, add)
    if code != OK:
        return None
    assert reply.id in {entry.id for entry in getattr(await listing(), entries)}
    return reply


_valid_jwks = st.builds(
    lambda keys: json.dumps({"keys": [k | {"kid": f"k{i}"} for i, k in enumerate(keys)]}),
    st.lists(st.sampled_from(_REAL_KEYS[:3] + _REAL_KEYS[4:5]), min_size=1, max_size=3),
)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=mostly(
        {
            "tenant": st.sampled_from(["acme"]),
            "issuer": st.sampled_from(["https://idp.test", "https://idp2.test/"]),
            "audiences": st.sampled_from([["signalbox"], ["a", "b"]]),
            "algorithms": st.sampled_from([["RS256", "ES256", "ES384", "EdDSA"]]),
            "jwks_json": _valid_jwks,
            "leeway_seconds": st.integers(0, 300),
            "subject_claim": st.sampled_from(["", "sub", "email"]),
            "tier_claim": st.sampled_from(["", "tier"]),
            "metadata_claims": st.sampled_from([{}, {"team": "grp"}]),
            "scopes": st.sampled_from([[], ["op:chat"]]),
        },
        {
            "tenant": odd_text,
            "issuer": odd_text,
            "audiences": st.lists(st.sampled_from(["signalbox"]) | odd_text, max_size=3),
            "algorithms": _algorithms,
            "jwks_json": jwks_documents,
            "leeway_seconds": uint32,
            "subject_claim": odd_text,
            "tier_claim": odd_text,
            "metadata_claims": _claim_maps,
            "scopes": _scopes,
        },
    )
)
async def test_add_jwt_issuer(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any]
) -> None:
    listing = admin_pb2.ListJwtIssuersRequest(tenant=fields["tenant"])
    request = admin_pb2.AddJwtIssuerRequest(
        tenant=fields.pop("tenant"), issuer=snapshot_pb2.JwtIssuer(**fields)
    )
    reply = await _check_added(
        seeded,
        control_plane,
        lambda: seeded.AddJwtIssuer(request),
        lambda: seeded.ListJwtIssuers(listing),
        "issuers",
    )
    if reply is not None:
        assert '"d"' not in reply.issuer.jwks_json
        # Removed again, so the next example may add the same issuer.
        await seeded.RemoveJwtIssuer(admin_pb2.RemoveJwtIssuerRequest(id=reply.id))


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=mostly(
        {
            "tenant": st.sampled_from(["acme"]),
            "uri": st.sampled_from(["spiffe://corp/app", "spiffe://corp/", "https://x"]),
            "prefix": st.booleans(),
            "scopes": st.sampled_from([[], ["op:chat"]]),
        },
        {
            "tenant": odd_text,
            "uri": st.sampled_from(["x://", "://y", "spiffe://corp/app"]) | odd_text,
            "prefix": st.booleans(),
            "scopes": _scopes,
        },
    )
)
async def test_add_mtls_mapping(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any]
) -> None:
    tenant = fields.pop("tenant")
    mapping = snapshot_pb2.MtlsMapping(**fields)
    add = admin_pb2.AddMtlsMappingRequest(tenant=tenant, mapping=mapping)
    listing = admin_pb2.ListMtlsMappingsRequest(tenant=tenant)
    await _check_added(
        seeded,
        control_plane,
        lambda: seeded.AddMtlsMapping(add),
        lambda: seeded.ListMtlsMappings(listing),
        "mappings",
    )
