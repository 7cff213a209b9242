"""The tenant isolation matrix of the Admin API, generated from the proto's list of RPCs.

Every RPC of ``AdminService`` must have a rule in ``controlplane.api.authz.RULES`` (a new RPC
without one fails here). Then, for every RPC, a tenant admin of tenant A calls it:

1. as it would on its own tenant (the request's tenant left empty, nothing named): whatever
   comes back carries nothing of tenant B (its id, name, keys, identities, admin tokens,
   evidence, audit rows), and a platform RPC is PERMISSION_DENIED;
2. on B's objects, as its rule says the target is found (B's name and id in the tenant field;
   the id of each of B's objects of the kind): PERMISSION_DENIED or NOT_FOUND, a NOT_FOUND
   worded exactly as for an id that does not exist; and afterwards every object of B is
   still there, unchanged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from controlplane.api.authz import (
    RULES,
    Authorizer,
    Catalog,
    Permission,
    Platform,
    Rule,
    TenantField,
    Tenants,
)
from controlplane.errors import PermissionDenied
from controlplane.services.base import Caller
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.jwks import TestIdp
from tests.fixtures.postgres import RunningControlPlane

SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)


def test_every_admin_rpc_has_an_authorization_rule() -> None:
    methods = [m.name for m in SERVICE.methods]
    assert [m for m in methods if m not in RULES] == []
    assert [m for m in RULES if m not in methods] == []


def test_platform_targets_need_platform_permissions_and_tenant_ones_do_not() -> None:
    """A tenant-bound identity holds no platform permission, so a ``Platform`` target is
    refused to it by the permission alone; a tenant-scoped target must not need one."""
    platform = {Permission.PLATFORM_READ, Permission.PLATFORM_WRITE}
    for name, rule in RULES.items():
        assert isinstance(rule.target, Platform) == (rule.permission in platform), name


@dataclass
class World:
    a_id: str
    b_id: str
    markers: set[str]
    """Strings only B's objects carry."""
    owned: dict[str, list[str]]
    """Ids of B's objects by ``Owned`` kind."""


async def _seed(admin: Admin, cp: RunningControlPlane) -> World:
    await admin.seed("alpha")
    b = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="beta", tier="gold"))
    a = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="alpha"))
    for tenant, model in (("alpha", "small"), ("beta", "large")):
        await admin.ApplyPolicy(
            admin_pb2.ApplyPolicyRequest(tenant=tenant, document=f'{{"default_model": "{model}"}}')
        )
    b_key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="beta", name="beta-key"))
    await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="alpha", name="alpha-key"))
    idp = TestIdp("https://idp.beta.test")
    jwt = await admin.AddJwtIssuer(
        admin_pb2.AddJwtIssuerRequest(
            tenant="beta",
            issuer=snapshot_pb2.JwtIssuer(
                issuer=idp.issuer,
                audiences=["signalbox"],
                algorithms=["ES256", "RS256"],
                jwks_json=idp.jwks(),
            ),
        )
    )
    mtls = await admin.AddMtlsMapping(
        admin_pb2.AddMtlsMappingRequest(
            tenant="beta", mapping=snapshot_pb2.MtlsMapping(uri="spiffe://beta.test/app")
        )
    )
    b_admin = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="beta-admin", role="tenant_admin", tenant="beta")
    )
    b_auditor = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="beta-auditor", role="auditor", tenant=b.id)
    )
    # B's admin leaves its own rows in the audit trail.
    b_stub = admin.with_token(b_admin.token)
    await b_stub.ListApiKeys(admin_pb2.ListApiKeysRequest())
    # Evidence of B in the store, as shipped.
    _execute(
        cp.database_url,
        "INSERT INTO evidence_records (chain_id, seq, ts, record_id, hash, prev_hash, node_id, correlation_id, "
        f"tenant_id, api_key_id, model, outcome, body) VALUES ('n1/0', 1, now(), 'r1', '\\x01', '\\x00', 'n1', "
        f"'beta-correlation', '{b.id}', '{b_key.key.id}', 'large', 'OK', '\\x7b7d')",
    )
    return World(
        a_id=a.id,
        b_id=b.id,
        markers={
            b.id,
            "beta",
            b_key.key.id,
            b_key.key.prefix,
            jwt.id,
            idp.issuer,
            mtls.id,
            "spiffe://beta.test",
            b_admin.info.id,
            b_auditor.info.id,
            "beta-correlation",
        },
        owned={"api_key": [b_key.key.id], "identity": [jwt.id, mtls.id], "admin_token": [b_admin.info.id]},
    )


def _execute(database_url: str, sql: str) -> None:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


async def _call(
    stub: admin_pb2_grpc.AdminServiceStub, method: MethodDescriptor, request: Any, token: str
) -> Any:
    """Call ``method`` as its streaming shape requires; the response (a list for streams)."""
    call = getattr(stub, method.name)
    metadata = (("authorization", f"Bearer {token}"),)
    if method.client_streaming:

        async def nothing() -> Any:
            for item in ():
                yield item

        return await call(nothing(), metadata=metadata, timeout=15)
    if method.server_streaming:
        return [chunk async for chunk in call(request, metadata=metadata, timeout=15)]
    return await call(request, metadata=metadata, timeout=15)


def _request(method: MethodDescriptor, **fields: str) -> Any:
    return message_factory.GetMessageClass(method.input_type)(**fields)


def _leaks(response: Any, markers: set[str]) -> list[str]:
    items = response if isinstance(response, list) else [response]
    data = b"".join(item.SerializeToString() for item in items)
    return sorted(m for m in markers if m.encode() in data)


async def _outcome(
    stub: admin_pb2_grpc.AdminServiceStub, method: MethodDescriptor, request: Any, token: str
) -> tuple[grpc.StatusCode, str, Any]:
    try:
        response = await _call(stub, method, request, token)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", None
    return grpc.StatusCode.OK, "", response


async def _state_of_b(admin: Admin, world: World) -> list[bytes]:
    """Everything of B, as a platform admin reads it."""
    return [
        (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="beta"))).SerializeToString(),
        (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant="beta"))).SerializeToString(),
        (await admin.GetPolicy(admin_pb2.GetPolicyRequest(tenant="beta"))).SerializeToString(),
        (await admin.ListJwtIssuers(admin_pb2.ListJwtIssuersRequest(tenant="beta"))).SerializeToString(),
        (await admin.ListMtlsMappings(admin_pb2.ListMtlsMappingsRequest(tenant="beta"))).SerializeToString(),
        (await admin.ListAdminTokens(admin_pb2.ListAdminTokensRequest(tenant="beta"))).SerializeToString(),
    ]


async def test_a_tenant_admin_of_a_gets_nothing_of_b_from_any_admin_rpc(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    world = await _seed(admin, control_plane)
    created = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="alpha-admin", role="tenant_admin", tenant="alpha")
    )
    token = created.token
    before = await _state_of_b(admin, world)
    stub = admin.stub
    problems: list[str] = []

    # 1. As on its own tenant: nothing of B comes back; platform RPCs are refused.
    for method in SERVICE.methods:
        rule: Rule = RULES[method.name]
        code, details, response = await _outcome(stub, method, _request(method), token)
        if isinstance(rule.target, Platform):
            if code != grpc.StatusCode.PERMISSION_DENIED:
                problems.append(f"{method.name}: platform RPC gave {code.name} {details}")
            continue
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            problems.append(f"{method.name}: {code.name} {details}")
        if response is not None and (leaked := _leaks(response, world.markers)):
            problems.append(f"{method.name}: B's {leaked} in A's answer")
        if isinstance(rule.target, (Catalog, Tenants)) and code != grpc.StatusCode.OK:
            problems.append(f"{method.name}: A may read the shared catalog and its tenant, got {code.name}")

    # 2. On B's objects, named in every field of the request that can name a tenant or an
    # object by id (from the descriptor, not from the rule, so a wrong rule cannot hide one).
    targets = {
        "tenant": ["beta", world.b_id],
        "tenant_id": ["beta", world.b_id],
        "id": [i for ids in world.owned.values() for i in ids],
    }
    for method in SERVICE.methods:
        attempts = [
            (field.name, value)
            for field in method.input_type.fields
            for value in targets.get(field.name, [])
            if field.type == field.TYPE_STRING
        ]
        if isinstance(RULES[method.name].target, Platform):
            attempts.append(("", ""))
        for name, value in attempts:
            request = _request(method, **({name: value} if name else {}))
            code, details, _ = await _outcome(stub, method, request, token)
            if code not in REFUSED:
                problems.append(f"{method.name} on B's {name}={value!r}: {code.name} {details}")
            elif code == grpc.StatusCode.NOT_FOUND and name == "id":
                ghost = str(uuid.uuid4())
                _, missing, _ = await _outcome(stub, method, _request(method, id=ghost), token)
                if details.replace(value, "<id>") != missing.replace(ghost, "<id>"):
                    problems.append(f"{method.name}: {details!r} differs from a missing id's {missing!r}")

    assert problems == []
    assert await _state_of_b(admin, world) == before


async def test_listings_of_a_tenant_admin_are_its_tenants_only(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    """The positive side of the matrix: A sees its own objects where B's are left out."""
    world = await _seed(admin, control_plane)
    created = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="alpha-admin", role="tenant_admin", tenant="alpha")
    )
    a = admin.with_token(created.token)
    assert [t.name for t in (await a.ListTenants(admin_pb2.ListTenantsRequest())).tenants] == ["alpha"]
    keys = (await a.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys
    assert [(k.name, k.tenant_id) for k in keys] == [("alpha-key", world.a_id)]
    tokens = (await a.ListAdminTokens(admin_pb2.ListAdminTokensRequest())).tokens
    assert [t.name for t in tokens] == ["alpha-admin"]
    providers = (await a.ListProviders(admin_pb2.ListProvidersRequest())).providers
    assert [p.name for p in providers] == ["sim"]
    assert not providers[0].HasField("credential")
    # Of the shared models, those A's policy may use: B's "large" is not named to A.
    assert [m.alias for m in (await a.ListModels(admin_pb2.ListModelsRequest())).models] == ["small"]
    assert len((await admin.ListModels(admin_pb2.ListModelsRequest())).models) == 2
    # A platform admin sees the credential reference; B's everything.
    assert (await admin.ListProviders(admin_pb2.ListProvidersRequest())).providers[0].credential.env
    assert {t.name for t in (await admin.ListTenants(admin_pb2.ListTenantsRequest())).tenants} == {
        "alpha",
        "beta",
    }
    rows = (await a.ListAdminAudit(admin_pb2.ListAdminAuditRequest(limit=1000))).entries
    assert rows
    assert all(world.a_id in (r.tenant, r.actor_tenant) for r in rows)


@pytest.mark.parametrize("role", ["tenant_admin", "auditor"])
async def test_a_tenant_bound_identity_cannot_widen_itself(
    admin: Admin, control_plane: RunningControlPlane, role: str
) -> None:
    await _seed(admin, control_plane)
    created = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="alpha-someone", role=role, tenant="alpha")
    )
    a = admin.with_token(created.token)
    for request in (
        admin_pb2.CreateAdminTokenRequest(name="up", role="platform_admin"),
        admin_pb2.CreateAdminTokenRequest(name="other", role="tenant_admin", tenant="beta"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.CreateAdminToken(request)
        assert refused.value.code() in REFUSED, (request, refused.value.details())
    names = {t.name for t in (await admin.ListAdminTokens(admin_pb2.ListAdminTokensRequest())).tokens}
    assert names.isdisjoint({"up", "other"})


async def test_a_tenant_without_a_policy_sees_the_models_of_the_platform_default(admin: Admin) -> None:
    await admin.seed("gamma")
    created = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="gamma-admin", role="tenant_admin", tenant="gamma")
    )
    gamma = admin.with_token(created.token)

    async def models() -> list[str]:
        return [m.alias for m in (await gamma.ListModels(admin_pb2.ListModelsRequest())).models]

    async def providers() -> list[str]:
        return [p.name for p in (await gamma.ListProviders(admin_pb2.ListProvidersRequest())).providers]

    assert (await models(), await providers()) == ([], [])
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(document='{"default_model": "large"}'))
    assert (await models(), await providers()) == (["large"], ["sim"])


async def test_an_rpc_without_a_rule_or_a_tenant_to_check_is_refused(
    control_plane: RunningControlPlane,
) -> None:
    """What the interceptor does when the table cannot decide: refuse, never let through."""
    assert control_plane.cp.admin is not None
    tenant_id = str(uuid.uuid4())
    bound = Caller("t", "someone", "tenant_admin", tenant_id=tenant_id, tenant_name="acme")
    authz = Authorizer(
        control_plane.cp.admin, {"Streamed": Rule(Permission.TENANT_READ, TenantField("tenant"))}
    )
    with pytest.raises(PermissionDenied, match="NewRpc has no authorization rule"):
        await authz.admit(bound, "NewRpc", admin_pb2.ListTenantsRequest())
    with pytest.raises(PermissionDenied, match="Streamed takes a stream"):
        await authz.admit(bound, "Streamed", None)
    request = admin_pb2.ListApiKeysRequest()
    assert (await authz.admit(bound, "Streamed", request)).tenant == tenant_id
    assert request.tenant == tenant_id
