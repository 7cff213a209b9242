"""Hostile Admin API input over a real gRPC server and real PostgreSQL: values the database
cannot hold, policy documents built to exhaust the parser, echoed values, and a scanner
without a token. Each is a precise status with a bounded message, and nothing is written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually

TABLES = ("tenants", "api_keys", "providers", "models", "deployments", "policies", "snapshots")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _scalar(database_url: str, sql: str) -> Any:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()


def _counts(database_url: str) -> dict[str, int]:
    return {table: _scalar(database_url, f"SELECT count(*) FROM {table}") for table in TABLES}


async def _refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def _provider(**fields: Any) -> admin_pb2.CreateProviderRequest:
    values: dict[str, Any] = {"name": "sim2", "type": "simulated", "base_url": "http://127.0.0.1:9/v1"}
    return admin_pb2.CreateProviderRequest(provider=admin_pb2.Provider(**{**values, **fields}))


def _model(deployment: dict[str, Any] | None = None, **fields: Any) -> admin_pb2.CreateModelRequest:
    d = {"provider": "sim", "upstream_model": "m-v1", **(deployment or {})}
    model = admin_pb2.Model(alias="m2", deployments=[admin_pb2.Deployment(**d)], **fields)
    return admin_pb2.CreateModelRequest(model=model)


def _year_10000() -> Timestamp:
    return Timestamp(seconds=253402300800)


# (method, request, the exact message). Each of these reached the database and came back
# INTERNAL before the Admin API checked values against controlplane.limits.
UNSTORABLE = [
    ("CreateTenant", admin_pb2.CreateTenantRequest(name="a" * 201), "name: at most 200 characters"),
    (
        "CreateTenant",
        admin_pb2.CreateTenantRequest(name="t2", tier="g" * 101),
        "tier: at most 100 characters",
    ),
    ("CreateTenant", admin_pb2.CreateTenantRequest(name="t2", tier="go\x00ld"), "tier: must not contain NUL"),
    (
        "CreateTenant",
        admin_pb2.CreateTenantRequest(name="t2", labels={"team": "a\x00b"}),
        "labels.team: must not contain NUL",
    ),
    (
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(tenant="acme", name="ci\x00"),
        "name: must not contain NUL",
    ),
    (
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(tenant="acme", expires_at=_year_10000()),
        "expires_at: must be between 0001-01-01 and 9999-12-31 (UTC)",
    ),
    (
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(tenant="acme", expires_at=Timestamp(seconds=2_000_000_000, nanos=-1)),
        "expires_at: nanos must be between 0 and 999999999",
    ),
    ("CreateProvider", _provider(timeout_ms=2**32 - 1), "provider.timeout_ms: at most 2147483647"),
    ("CreateProvider", _provider(base_url="http://h/\x00"), "provider.base_url: must not contain NUL"),
    ("CreateProvider", _provider(site="s" * 201), "provider.site: at most 200 characters"),
    (
        "CreateProvider",
        _provider(credential=snapshot_pb2.SecretRef(file="/run/\x00key")),
        "provider.credential.file: must not contain NUL",
    ),
    ("CreateModel", _model(context_window=2**31), "model.context_window: at most 2147483647"),
    (
        "CreateModel",
        _model({"weight": 2**31}),
        "model.deployments[0].weight: at most 2147483647",
    ),
    (
        "CreateModel",
        _model({"upstream_model": "u" * 201}),
        "model.deployments[0].upstream_model: at most 200 characters",
    ),
    ("CreateModel", _model(certifications=["iso\x00"]), "model.certifications[0]: must not contain NUL"),
    ("CreateModel", _model(attributes={"k\x00": "v"}), "model.attributes key: must not contain NUL"),
    ("GetTenant", admin_pb2.GetTenantRequest(tenant="ac\x00me"), "tenant: must not contain NUL"),
    ("GetSnapshot", admin_pb2.GetSnapshotRequest(version=2**63), "version: at most 9223372036854775807"),
    ("GetPolicy", admin_pb2.GetPolicyRequest(version=2**64 - 1), "version: at most 9223372036854775807"),
]


@pytest.mark.parametrize(("method", "request_", "message"), UNSTORABLE, ids=[m for _, _, m in UNSTORABLE])
async def test_values_the_database_cannot_hold_are_invalid_arguments_naming_field_and_limit(
    admin: Admin, control_plane: RunningControlPlane, method: str, request_: Any, message: str
) -> None:
    await admin.seed()
    before = _counts(control_plane.database_url)
    code, details = await _refused(getattr(admin, method)(request_))
    assert (code, details) == (INVALID, message)
    assert _counts(control_plane.database_url) == before
    # The server goes on serving.
    tenant = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    assert tenant.name == "acme"


async def _apply(admin: Admin, document: str) -> tuple[grpc.StatusCode, str]:
    return await _refused(admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=document)))


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ",".join([f"*{chr(ord('a') + i - 1)}"] * 9) + "]"
            for i in range(1, 9)
        ),
    ]
)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[" * 1000 + "]" * 1000, "document: nested deeper than 64 levels"),
        ('{"a":' * 1000 + "1" + "}" * 1000, "document: nested deeper than 64 levels"),
        (
            "\n".join("  " * i + "k:" for i in range(1000)) + " 1",
            "document: nested deeper than 64 levels (line 65)",
        ),
        ("- " * 1000 + "x", "document: nested deeper than 64 levels (line 1)"),
        (BILLION_LAUGHS, "document: YAML anchors and aliases are not allowed (line 1)"),
        (
            "default_model: &m small\nallowed_models: [small]\n",
            "document: YAML anchors and aliases are not allowed (line 1)",
        ),
        ("allowed_models: " + "9" * 5000, None),
        ("x" * (1024 * 1024 + 1), "document: at most 1048576 bytes"),
        ("\x08", None),
        (
            '{"default_model": "small", "constraints": {"max_cost_usd": 1e308}}',
            "document.constraints.max_cost_usd: must be a number from 0 to 9223372036",
        ),
        (
            '{"default_model": "small", "description": "\\ud800"}',
            "document.description: lone surrogate \\ud800 is not valid Unicode",
        ),
        (
            'default_model: small\ndescription: "\\udc00"\n',
            "document.description: lone surrogate \\udc00 is not valid Unicode",
        ),
    ],
    ids=[
        "json-lists",
        "json-objects",
        "yaml-block",
        "yaml-sequence",
        "alias-bomb",
        "anchor",
        "huge-int",
        "huge",
        "control-char",
        "huge-cost",
        "json-surrogate",
        "yaml-surrogate",
    ],
)
async def test_policy_documents_built_to_exhaust_the_parser_are_refused_cheaply(
    admin: Admin, control_plane: RunningControlPlane, document: str, message: str | None
) -> None:
    await admin.seed()
    before = _counts(control_plane.database_url)
    code, details = await _apply(admin, document)
    assert code == INVALID
    if message is not None:
        assert details == message
    assert len(details.encode()) <= 1024
    assert _counts(control_plane.database_url) == before
    applied = await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document='{"default_model": "small"}')
    )
    assert applied.version == 1


async def test_the_alias_bomb_neither_grows_the_process_nor_stalls_other_calls(admin: Admin) -> None:
    """The 375-byte bomb once took the control plane to 2.8 GiB for 9 s. Refused at its first
    anchor, it costs nothing; admin calls alongside it are answered."""
    await admin.seed()
    bomb = BILLION_LAUGHS
    results = await asyncio.gather(
        *(_apply(admin, bomb) for _ in range(20)),
        *(admin.ListTenants(admin_pb2.ListTenantsRequest()) for _ in range(20)),
    )
    refusals, listings = results[:20], results[20:]
    assert {code for code, _ in refusals} == {INVALID}  # type: ignore[misc]
    assert all(len(r.tenants) == 1 for r in listings)  # type: ignore[union-attr]


# ---- bounded messages ----


async def test_echoed_values_are_clipped_and_control_characters_escaped(admin: Admin) -> None:
    await admin.seed()
    code, details = await _refused(admin.GetTenant(admin_pb2.GetTenantRequest(tenant="é" * 200)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == f"tenant {'é' * 64 + '...(200 chars)'!r} not found"

    # A policy's unknown field is named by its path: the key is the caller's.
    document = json.dumps({"default_model": "small", "\x1b[2J\x07" + "k" * 300: 1})
    code, details = await _apply(admin, document)
    assert code == INVALID
    assert "\x1b" not in details
    assert "\x07" not in details
    assert details.startswith("document.\\x1b[2J\\x07kkk")
    assert details.endswith("unknown field")
    assert len(details) < 400


async def test_schema_messages_do_not_embed_the_whole_document(admin: Admin) -> None:
    """jsonschema puts the offending instance in its message; a huge one is clipped."""
    await admin.seed()
    code, details = await _apply(admin, json.dumps({"allowed_models": "x" * 200_000}))
    assert code == INVALID
    assert details.startswith("document.allowed_models: 'xxxx")
    assert len(details.encode()) <= 1024


# ---- a scanner without a token ----


async def test_unauthenticated_calls_from_one_peer_write_a_bounded_number_of_audit_rows(
    control_plane: RunningControlPlane,
) -> None:
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        bad = (("authorization", "Bearer sbxadm_guess"),)

        async def scan(i: int) -> grpc.StatusCode:
            metadata = bad if i % 2 else ()
            code, _ = await _refused(
                stub.ListTenants(admin_pb2.ListTenantsRequest(), metadata=metadata, timeout=30)
            )
            return code

        codes = []
        for start in range(0, 1000, 50):
            codes += await asyncio.gather(*(scan(i) for i in range(start, start + 50)))
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 1000
    rows = _scalar(control_plane.database_url, "SELECT count(*) FROM audit_log WHERE actor = 'anonymous'")
    assert 1 <= rows <= 20
    # Authenticated calls are audited as ever.
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        await stub.ListTenants(admin_pb2.ListTenantsRequest(), metadata=control_plane.metadata, timeout=10)
    assert (
        _scalar(control_plane.database_url, "SELECT count(*) FROM audit_log WHERE actor = 'admin:tests'") == 1
    )


async def test_a_window_of_suppressed_calls_ends_in_one_summary_row(
    database_url: str, private_tmp: Path
) -> None:
    settings = cp_settings(
        database_url, private_tmp, unauthenticated_audit_rows=3, unauthenticated_audit_window=0.5
    )
    async with running_control_plane(settings) as cp, grpc.aio.insecure_channel(cp.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for _ in range(10):
            code, _ = await _refused(stub.ListTenants(admin_pb2.ListTenantsRequest(), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED

        def summary() -> list[str]:
            engine = sa.create_engine(database_url, poolclass=sa.NullPool)
            try:
                with engine.connect() as conn:
                    sql = "SELECT detail FROM audit_log WHERE actor = 'anonymous' ORDER BY id"
                    return [row[0] for row in conn.execute(sa.text(sql))]
            finally:
                engine.dispose()

        # Without another call: the window's end alone writes the summary.
        details = await eventually(lambda: len(summary()) == 4 and summary(), message="summary row")
        assert details[-1] == "7 more unauthenticated calls from ipv4:127.0.0.1 suppressed"
        assert all(d.startswith("missing admin token") for d in details[:3])


async def test_merged_labels_are_held_to_the_limit_of_one_request(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    """Each UpdateTenant may send 64 labels; merged into the stored ones they once grew
    without bound (192 after three calls), and every label travels to every node."""
    await admin.seed()
    full = {f"k{i}": "v" for i in range(64)}
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", labels=full))
    before = _counts(control_plane.database_url)
    code, details = await _refused(
        admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", labels={"one-more": "v"}))
    )
    assert (code, details) == (INVALID, "labels: at most 64 entries (merged with the tenant's 64, 65)")
    assert _counts(control_plane.database_url) == before
    tenant = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    assert dict(tenant.labels) == full
    # Changing existing labels, or replacing them all, is still fine.
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", labels={"k0": "w"}))
    replaced = await admin.UpdateTenant(
        admin_pb2.UpdateTenantRequest(tenant="acme", labels={"one-more": "v"}, replace_labels=True)
    )
    assert dict(replaced.labels) == {"one-more": "v"}


# JWKS keys PyJWT refuses with InvalidKeyError (no PyJWKError): each came back INTERNAL.
UNBUILDABLE_KEYS = [
    ({"kty": "OKP", "x": "AA", "kid": "o"}, "EdDSA", "OKP"),
    ({"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA", "kid": "e"}, "ES256", "EC"),
    ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "e"}, "ES256", "EC"),
    ({"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "HS256", "kid": "r"}, "RS256", "RSA"),
]


@pytest.mark.parametrize(
    ("jwk", "alg", "kty"), UNBUILDABLE_KEYS, ids=[str(k) for k, _, _ in UNBUILDABLE_KEYS]
)
async def test_a_jwks_key_no_public_key_can_be_built_from_is_an_invalid_argument(
    admin: Admin, control_plane: RunningControlPlane, jwk: dict[str, str], alg: str, kty: str
) -> None:
    await admin.seed()
    before = _scalar(control_plane.database_url, "SELECT count(*) FROM tenant_identities")
    issuer = snapshot_pb2.JwtIssuer(
        issuer="https://idp.test",
        audiences=["signalbox"],
        algorithms=[alg],
        jwks_json=json.dumps({"keys": [jwk]}),
    )
    code, details = await _refused(
        admin.AddJwtIssuer(admin_pb2.AddJwtIssuerRequest(tenant="acme", issuer=issuer))
    )
    assert code == INVALID
    assert details.startswith(f"issuer.jwks_json.keys[0]: is not a valid {kty} public key (")
    assert len(details) < 200
    assert _scalar(control_plane.database_url, "SELECT count(*) FROM tenant_identities") == before
    # The server goes on serving, and a good issuer is taken.
    assert (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))).name == "acme"
