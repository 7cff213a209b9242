"""AdminService over a real gRPC server and a real database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid

import grpc
import pytest

from controlplane.api.authz import RULES, WRITES
from dataplane.snapshot.envelope import verify
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2
from tests.controlplane.conftest import Admin, SyncNode
from tests.fixtures.postgres import RunningControlPlane, sql_rows


async def _code(awaitable: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


# ---- authentication and audit ----


@pytest.mark.parametrize(
    "metadata", [(), (("authorization", "Bearer sbxadm_wrong"),), (("authorization", "Basic x"),)]
)
async def test_calls_without_a_valid_admin_token_are_unauthenticated(
    control_plane: RunningControlPlane, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        code, _ = await _code(stub.ListTenants(admin_pb2.ListTenantsRequest(), metadata=metadata, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_every_call_is_audited_with_who_what_and_result(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    await _code(admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme")))
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        await _code(stub.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"), timeout=10))
    rows = sql_rows(
        control_plane.database_url, "SELECT actor, method, target, result FROM audit_log ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        ("admin:tests", "CreateTenant", "name=acme", "OK"),
        ("admin:tests", "CreateTenant", "name=acme", "ALREADY_EXISTS"),
        ("anonymous", "GetTenant", "tenant=acme", "UNAUTHENTICATED"),
    ]


# ---- tenants ----


async def test_tenant_crud(admin: Admin) -> None:
    created = await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(name="acme", tier="gold", labels={"region": "eu"})
    )
    assert created.id
    assert created.active
    assert created.tier == "gold"
    assert (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant=created.id))).name == "acme"
    assert (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))).id == created.id

    updated = await admin.UpdateTenant(
        admin_pb2.UpdateTenantRequest(tenant="acme", active=False, labels={"team": "ml"})
    )
    assert not updated.active
    assert updated.tier == "gold"
    assert dict(updated.labels) == {"region": "eu", "team": "ml"}
    replaced = await admin.UpdateTenant(
        admin_pb2.UpdateTenantRequest(tenant="acme", labels={"x": "y"}, replace_labels=True)
    )
    assert dict(replaced.labels) == {"x": "y"}

    listed = await admin.ListTenants(admin_pb2.ListTenantsRequest())
    assert [t.name for t in listed.tenants] == ["acme"]
    deleted = await admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant="acme"))
    assert deleted.snapshot_version > 0
    code, _ = await _code(admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme")))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_tenant_errors_name_the_field(admin: Admin) -> None:
    code, message = await _code(admin.CreateTenant(admin_pb2.CreateTenantRequest(name="")))
    assert (code, message.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "name")
    code, message = await _code(admin.CreateTenant(admin_pb2.CreateTenantRequest(name="has space")))
    assert (code, message.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "name")
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    code, _ = await _code(admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme")))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    for call in (
        admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="nope", tier="x")),
        admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant="nope")),
    ):
        code, message = await _code(call)
        assert code == grpc.StatusCode.NOT_FOUND
        assert "nope" in message


# ---- API keys ----


async def test_api_key_secret_is_returned_once_and_stored_only_as_a_hash(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    created = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant="acme", name="ci", scopes=["op:chat"])
    )
    assert created.secret.startswith("sbx_")
    assert len(created.secret) > 30
    assert created.secret.startswith(created.key.prefix)
    assert len(created.key.prefix) < len(created.secret) // 2

    listed = await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant="acme"))
    assert [k.id for k in listed.keys] == [created.key.id]
    assert created.secret not in str(listed)

    # sbx_<key id>_<secret>: the id as listed, then 256 bits of secret.
    _, key_id, secret = created.secret.split("_", 2)
    assert str(uuid.UUID(key_id)) == created.key.id
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32

    # Stored as the HMAC under the sealed hash key, never as a plain hash of the key.
    (row,) = sql_rows(control_plane.database_url, "SELECT secret_hmac, secret_sha256, prefix FROM api_keys")
    hasher = control_plane.cp.api_key_hasher
    assert hasher is not None
    assert bytes(row[0]) == hmac.digest(hasher.key, created.secret.encode(), "sha256")
    assert row[1] is None
    sealed = sql_rows(control_plane.database_url, "SELECT sealed_key FROM api_key_hash_key")
    assert hasher.key not in bytes(sealed[0][0])

    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    snapshot = snapshot_pb2.Snapshot.FromString(envelope.payload)
    assert [bytes(k.secret_hmac) for k in snapshot.api_keys] == [bytes(row[0])]
    assert [bytes(k.secret_sha256) for k in snapshot.api_keys] == [b""]
    assert hasher.key not in envelope.SerializeToString()

    await admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=created.key.id))
    assert not (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys
    code, _ = await _code(admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=created.key.id)))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("scopes", "message"),
    [
        (["op:chat", "foo:x"], "scopes[1]: unknown scope kind 'foo' (known: model, op, task)"),
        (["op:infer"], "scopes[0]: op: unknown operation 'infer' (known: chat, embed, stream)"),
        (["infer"], "scopes[0]: 'infer' is not KIND:VALUE (kinds: model, op, task)"),
        ([""], "scopes[0]: '' is not KIND:VALUE (kinds: model, op, task)"),
        (["task:"], "scopes[0]: task: value must not be empty"),
        (["task:a b"], "scopes[0]: task: value 'a b' contains whitespace or control characters"),
        (["model:" + "m" * 129], "scopes[0]: model: value is 129 characters, more than 128"),
        (["model:a", "model:a"], "scopes[1]: duplicate of scopes[0]"),
    ],
)
async def test_api_key_scopes_are_validated_naming_the_entry_and_the_rule(
    admin: Admin, scopes: list[str], message: str
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    code, details = await _code(
        admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", scopes=scopes))
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert not (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys


async def test_api_key_scopes_are_kept_and_shipped_and_may_name_a_model_not_yet_registered(
    admin: Admin,
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    scopes = ["model:not-registered-yet", "model:org:m", "task:review", "op:chat", "op:stream"]
    created = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", scopes=scopes))
    assert list(created.key.scopes) == scopes
    (listed,) = (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant="acme"))).keys
    assert list(listed.scopes) == scopes
    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    (key,) = snapshot_pb2.Snapshot.FromString(envelope.payload).api_keys
    assert sorted(key.scopes) == sorted(scopes)


async def test_api_key_for_unknown_tenant_is_not_found(admin: Admin) -> None:
    code, _ = await _code(admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="ghost")))
    assert code == grpc.StatusCode.NOT_FOUND


# ---- providers and models ----


async def test_provider_and_model_crud(admin: Admin) -> None:
    await admin.seed()
    providers = (await admin.ListProviders(admin_pb2.ListProvidersRequest())).providers
    assert [(p.name, p.credential.env) for p in providers] == [("sim", "SIGNALBOX_CRED_SIM")]
    models = (await admin.ListModels(admin_pb2.ListModelsRequest())).models
    assert [m.alias for m in models] == ["large", "small"]
    assert models[0].deployments[0].provider == providers[0].id

    updated = await admin.UpdateProvider(
        admin_pb2.UpdateProviderRequest(
            provider=admin_pb2.Provider(
                name="sim", type="simulated", base_url="http://127.0.0.1:10/v1", timeout_ms=5000
            )
        )
    )
    assert updated.id == providers[0].id
    assert updated.timeout_ms == 5000
    assert not updated.credential.env

    model = admin_pb2.Model(
        alias="small",
        context_window=8000,
        deployments=[admin_pb2.Deployment(provider=providers[0].id, upstream_model="small-v2", weight=3)],
    )
    changed = await admin.UpdateModel(admin_pb2.UpdateModelRequest(model=model))
    assert changed.context_window == 8000
    assert [(d.upstream_model, d.weight) for d in changed.deployments] == [("small-v2", 3)]

    await admin.DeleteModel(admin_pb2.DeleteModelRequest(model="small"))
    await admin.DeleteModel(admin_pb2.DeleteModelRequest(model="large"))
    await admin.DeleteProvider(admin_pb2.DeleteProviderRequest(provider="sim"))
    assert not (await admin.ListProviders(admin_pb2.ListProvidersRequest())).providers


async def test_provider_and_model_bad_input(admin: Admin) -> None:
    bad = admin_pb2.Provider(name="p", type="no-such-adapter")
    code, message = await _code(admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=bad)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("provider.type:")
    bad = admin_pb2.Provider(name="p", type="simulated", base_url="ftp://x")
    code, message = await _code(admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=bad)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("provider.base_url:")

    bad = admin_pb2.Provider(name="p", type="simulated", settings={"api_key": "sk-live-123"})
    code, message = await _code(admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=bad)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("provider.settings.api_key:")
    assert "sk-live-123" not in message
    ok = admin_pb2.Provider(
        name="p", type="simulated", settings={"api_version": "2024-10-21", "max_tokens": "5"}
    )
    await admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=ok))

    no_deployments = admin_pb2.Model(alias="m")
    code, message = await _code(admin.CreateModel(admin_pb2.CreateModelRequest(model=no_deployments)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("model.deployments:")
    ghost = admin_pb2.Model(
        alias="m", deployments=[admin_pb2.Deployment(provider="ghost", upstream_model="x")]
    )
    code, message = await _code(admin.CreateModel(admin_pb2.CreateModelRequest(model=ghost)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "model.deployments[0].provider" in message


async def test_no_model_may_be_called_auto_which_both_doors_read_as_the_policys_choice(admin: Admin) -> None:
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(provider=admin_pb2.Provider(name="p", type="simulated"))
    )
    deployments = [admin_pb2.Deployment(provider="p", upstream_model="x")]
    code, message = await _code(
        admin.CreateModel(
            admin_pb2.CreateModelRequest(model=admin_pb2.Model(alias="auto", deployments=deployments))
        )
    )
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        'model.alias: "auto" is reserved: a request for it is the policy\'s choice',
    )
    model = await admin.CreateModel(
        admin_pb2.CreateModelRequest(model=admin_pb2.Model(alias="m", deployments=deployments))
    )
    model.alias = "auto"
    code, message = await _code(admin.UpdateModel(admin_pb2.UpdateModelRequest(model=model)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("model.alias:")
    assert [
        m.alias for m in (await admin.ListModels(admin_pb2.ListModelsRequest())).models if m.id == model.id
    ] == ["m"]


async def test_a_model_naming_one_deployment_twice_is_refused(admin: Admin) -> None:
    # Stored twice, the same provider and upstream model became two deployments: twice the
    # weight, a fallback that retries what just failed, and a breaker split in two.
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(provider=admin_pb2.Provider(name="p", type="simulated"))
    )
    (provider,) = [
        p for p in (await admin.ListProviders(admin_pb2.ListProvidersRequest())).providers if p.name == "p"
    ]
    twice = admin_pb2.Model(
        alias="m",
        deployments=[
            admin_pb2.Deployment(provider="p", upstream_model="x"),
            admin_pb2.Deployment(provider="p", upstream_model="y"),
            admin_pb2.Deployment(provider=provider.id, upstream_model="x"),  # by id: the same one
        ],
    )
    code, message = await _code(admin.CreateModel(admin_pb2.CreateModelRequest(model=twice)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("model.deployments[2]:"), message
    assert "deployments[0]" in message
    assert not [m for m in (await admin.ListModels(admin_pb2.ListModelsRequest())).models if m.alias == "m"]
    twice.deployments.pop()
    await admin.CreateModel(admin_pb2.CreateModelRequest(model=twice))


async def test_deleting_what_is_still_referenced_names_the_referrer(admin: Admin) -> None:
    await admin.seed()
    code, message = await _code(admin.DeleteProvider(admin_pb2.DeleteProviderRequest(provider="sim")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "'large'" in message
    assert "'small'" in message

    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document='{"default_model": "small"}')
    )
    before = await admin.latest_version()
    code, message = await _code(admin.DeleteModel(admin_pb2.DeleteModelRequest(model="small")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy of tenant 'acme'" in message
    assert await admin.latest_version() == before
    assert len((await admin.ListModels(admin_pb2.ListModelsRequest())).models) == 2


# ---- policies ----


async def test_policy_apply_yaml_history_get_and_delete(admin: Admin) -> None:
    await admin.seed()
    first = await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(
            tenant="acme", document="default_model: small\nallowed_models: [small, large]\n"
        )
    )
    assert first.version == 1
    assert first.created_by == "admin:tests"
    assert first.document_json == json.dumps(
        {"allowed_models": ["small", "large"], "default_model": "small"},
        sort_keys=True,
        separators=(",", ":"),
    )
    second = await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document='{"default_model": "large"}')
    )
    assert second.version == 2
    assert (await admin.GetPolicy(admin_pb2.GetPolicyRequest(tenant="acme"))).version == 2
    assert (await admin.GetPolicy(admin_pb2.GetPolicyRequest(tenant="acme", version=1))).id == first.id

    default = await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(document='{"default_model": "small"}'))
    assert default.tenant_id == ""
    assert default.version == 1

    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    snapshot = snapshot_pb2.Snapshot.FromString(envelope.payload)
    assert sorted((p.tenant_id != "", p.version) for p in snapshot.policies) == [(False, 1), (True, 2)]

    await admin.DeletePolicy(admin_pb2.DeletePolicyRequest(tenant="acme"))
    code, _ = await _code(admin.GetPolicy(admin_pb2.GetPolicyRequest(tenant="acme")))
    assert code == grpc.StatusCode.NOT_FOUND
    history = await admin.ListPolicyHistory(admin_pb2.ListPolicyHistoryRequest(tenant="acme"))
    assert [p.version for p in history.versions] == [1, 2, 3]
    code, _ = await _code(admin.DeletePolicy(admin_pb2.DeletePolicyRequest(tenant="acme")))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ('{"default_model": "ghost"}', "document.default_model"),
        ('{"allowed_models": ["small", "ghost"]}', "document.allowed_models[1]"),
        ('{"rules": [{"bogus": 2}]}', "document.rules[0].bogus"),
        ("- just\n- a list\n", "document"),
        ("{not: [valid", "document"),
        ("", "document"),
    ],
)
async def test_invalid_policy_names_the_path_and_stores_nothing(
    admin: Admin, document: str, field: str
) -> None:
    await admin.seed()
    before = await admin.latest_version()
    code, message = await _code(
        admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=document))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.split(":")[0] == field, message
    assert await admin.latest_version() == before
    history = await admin.ListPolicyHistory(admin_pb2.ListPolicyHistoryRequest(tenant="acme"))
    assert not history.versions


REFUSED = {
    "unknown model": (
        '{"allowed_models": ["small"], "rules": [{"models": ["small", "ghost"]}]}',
        "document.rules[0].models[1]",
        "unknown model 'ghost'",
    ),
    "weights all zero": (
        '{"allowed_models": ["small", "large"], "rules": [{"strategy": "weighted", "weights": {"small": 0, "large": 0}}]}',
        "document.rules[0].weights",
        "must not all be zero",
    ),
    "negative weight": (
        '{"allowed_models": ["small", "large"], "rules": [{"strategy": "weighted", "weights": {"small": -1, "large": 3}}]}',
        "document.rules[0].weights.small",
        "",
    ),
    # Visibility is explicit: a policy names the models it may use.
    "no models named": (
        '{"rules": [{"models": ["small"]}]}',
        "document.allowed_models",
        "required when there is no default_model",
    ),
    "a model beyond the default without allowed_models": (
        '{"default_model": "small", "rules": [{"models": ["large"]}]}',
        "document.rules[0].models[0]",
        "not in allowed_models",
    ),
    "unknown field": (
        "rules:\n  - models: [small]\n    priority: 1\n",
        "document.rules[0].priority",
        "unknown field",
    ),
    # The compiler ignores a description; only the published schema says it is text.
    "schema: description not a string": (
        '{"description": 42}',
        "document.description",
        "not of type 'string'",
    ),
    "schema: wrong type": (
        '{"retry": {"max_attempts": "three"}}',
        "document.retry.max_attempts",
        "not of type",
    ),
    "schema: unknown strategy": (
        '{"rules": [{"models": ["small"], "strategy": "random"}]}',
        "document.rules[0].strategy",
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_refused_policy_changes_no_snapshot_and_reaches_no_node(
    admin: Admin, sync_nodes: object, case: str
) -> None:
    document, field, problem = REFUSED[case]
    await admin.seed()
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: small"))
    node: SyncNode = await sync_nodes("edge-1")  # type: ignore[operator]
    running = await node.next_envelope()
    node.ack(running, node.verified(running).version)
    before = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())
    assert node.verified(running).version == before.version

    code, message = await _code(
        admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=document))
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.split(": ")[0] == field, message
    assert problem in message
    after = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())
    assert (after.version, after.payload_sha256) == (before.version, before.payload_sha256)
    history = await admin.ListPolicyHistory(admin_pb2.ListPolicyHistoryRequest(tenant="acme"))
    assert [v.version for v in history.versions] == [1]
    # Nothing was pushed for the refusal: the next envelope the node sees is the next
    # accepted change, one version on, still carrying the running policy.
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="other"))
    pushed = node.verified(await node.next_envelope())
    assert pushed.version == before.version + 1
    assert [p.document_json for p in pushed.policies] == ['{"default_model":"small"}']


# ---- snapshots and routing ----


async def test_every_change_is_a_new_signed_snapshot_chained_to_the_last(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    start = await admin.latest_version()
    await admin.seed()
    info = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())
    assert info.version == start + 4  # tenant, provider, two models
    assert info.signing_key_id == control_plane.key_id

    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    assert verify(envelope, {control_plane.key_id: control_plane.public_key}) == control_plane.key_id
    assert hashlib.sha256(envelope.payload).digest() == info.payload_sha256
    snapshot = snapshot_pb2.Snapshot.FromString(envelope.payload)
    previous = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(version=info.version - 1))
    assert snapshot.version == info.version
    assert snapshot.previous_hash == previous.payload_sha256
    assert snapshot.expires_at.ToSeconds() > snapshot.created_at.ToSeconds()
    assert [k.key_id for k in snapshot.trusted_keys] == [control_plane.key_id]
    assert [p.credential.env for p in snapshot.providers] == ["SIGNALBOX_CRED_SIM"]
    code, _ = await _code(admin.GetSnapshot(admin_pb2.GetSnapshotRequest(version=10_000)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_explain_route_follows_the_current_policy(admin: Admin) -> None:
    await admin.seed()
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document='{"default_model": "large"}')
    )
    explained = await admin.ExplainRoute(
        admin_pb2.ExplainRouteRequest(tenant="acme", request=infer_pb2.InferRequest())
    )
    assert explained.decision.chosen_model == "large"
    assert explained.plan[0] == "large@sim"

    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(
            tenant="acme", document='{"default_model": "small", "allowed_models": ["small"]}'
        )
    )
    explained = await admin.ExplainRoute(
        admin_pb2.ExplainRouteRequest(tenant="acme", request=infer_pb2.InferRequest())
    )
    assert explained.decision.chosen_model == "small"
    # A registered model the policy does not allow explains exactly like a model that
    # does not exist: the node's planner decides, and it does not tell them apart.
    forbidden = await _code(
        admin.ExplainRoute(
            admin_pb2.ExplainRouteRequest(tenant="acme", request=infer_pb2.InferRequest(model="large"))
        )
    )
    unknown = await _code(
        admin.ExplainRoute(
            admin_pb2.ExplainRouteRequest(tenant="acme", request=infer_pb2.InferRequest(model="ghost"))
        )
    )
    assert forbidden[0] == unknown[0] == grpc.StatusCode.NOT_FOUND
    assert forbidden[1].replace("large", "X") == unknown[1].replace("ghost", "X")
    assert "unknown model 'large'" in forbidden[1]
    code, _ = await _code(admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="ghost")))
    assert code == grpc.StatusCode.NOT_FOUND


EXPLAINED_POLICY = """
default_model: small
allowed_models: [small, large, tiny]
rules:
  - name: sized
    match: {tasks: [long]}
    models: [tiny, large]
  - name: canary
    match: {metadata: {env: [prod]}}
    strategy: weighted
    weights: {small: 1, large: 1}
    sticky_key: metadata.user_id
    shadow: {model: tiny, share: 1}
"""


def _asking(text: str, **fields: object) -> infer_pb2.InferRequest:
    request = infer_pb2.InferRequest(**fields)  # type: ignore[arg-type]
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text=text)
    return request


async def test_explain_route_sizes_the_request_and_matches_its_metadata(admin: Admin) -> None:
    await admin.seed()
    tiny = admin_pb2.Model(
        alias="tiny",
        capabilities=[1],
        context_window=50,
        deployments=[admin_pb2.Deployment(provider="sim", upstream_model="tiny-v1")],
    )
    await admin.CreateModel(admin_pb2.CreateModelRequest(model=tiny))
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=EXPLAINED_POLICY))

    # 400 characters are estimated at 100 tokens, as the node estimates them: too many for tiny.
    sized = await admin.ExplainRoute(
        admin_pb2.ExplainRouteRequest(tenant="acme", request=_asking("x" * 400, task="long"))
    )
    assert sized.estimated_input_tokens == 100
    assert sized.decision.rule == "sized"
    assert list(sized.decision.candidates) == ["tiny", "large"]
    assert [(d.model, d.reason) for d in sized.decision.dropped] == [
        ("tiny", "context window 50 < 100 tokens needed")
    ]
    assert list(sized.plan) == ["large@sim"]
    assert not sized.decision.attempts
    short = await admin.ExplainRoute(
        admin_pb2.ExplainRouteRequest(tenant="acme", request=_asking("hi", task="long"))
    )
    assert list(short.plan) == ["tiny@sim", "large@sim"]

    # The request's metadata selects the rule and keys the sticky split.
    arms = set()
    for user in ("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"):
        request = _asking("hi", metadata={"env": "prod", "user_id": user})
        first = await admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="acme", request=request))
        again = await admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="acme", request=request))
        assert first.decision.rule == "canary"
        assert first.decision.strategy == "weighted"
        assert first.arm == again.arm
        assert first.plan[0] == f"{first.arm}@sim"
        assert first.decision.chosen_model == first.arm
        assert first.shadow == "tiny@sim"
        arms.add(first.arm)
    assert arms == {"small", "large"}
    staging = await admin.ExplainRoute(
        admin_pb2.ExplainRouteRequest(tenant="acme", request=_asking("hi", metadata={"env": "staging"}))
    )
    assert (staging.decision.rule, staging.arm, staging.shadow) == ("default", "", "")

    # Capabilities the content implies count as on a node: a tool definition needs tools.
    with_tools = _asking("hi")
    with_tools.tools.add(name="lookup")
    code, message = await _code(
        admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="acme", request=with_tools))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "capability 'tools'" in message


async def test_a_viewer_token_may_read_but_not_change(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    assert control_plane.cp.admin is not None
    _, token = await control_plane.cp.admin.create_token("auditor", role="auditor")
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        viewer = Admin(admin_pb2_grpc.AdminServiceStub(channel), (("authorization", f"Bearer {token}"),))
        listed = await viewer.ListTenants(admin_pb2.ListTenantsRequest())
        assert [t.name for t in listed.tenants] == ["acme"]
        code, message = await _code(viewer.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant="acme")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "auditor" in message
    assert [t.name for t in (await admin.ListTenants(admin_pb2.ListTenantsRequest())).tenants] == ["acme"]


def test_every_admin_rpc_that_changes_something_needs_a_write_permission() -> None:
    """A new RPC must have a rule (api/authz.py); one whose name says it changes something
    must need a write permission, which auditors never hold."""
    methods = set(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
    assert methods == set(RULES)
    # Reads that are named like writes: exporting marks a version kept, nothing more.
    reads = {"ExportSnapshot", "ExportEvidence"}
    mutating = {
        m
        for m in methods - reads
        if m.startswith(
            (
                "Create",
                "Update",
                "Delete",
                "Apply",
                "Rollback",
                "Rotate",
                "Revoke",
                "Retire",
                "Import",
                "Add",
                "Remove",
                "Certify",
                "Prune",
                "Set",
                "Clear",
            )
        )
    }
    assert {m for m in mutating if RULES[m].permission not in WRITES} == set()
    assert {m for m in methods - mutating if RULES[m].permission in WRITES} == set()


async def test_explain_route_checks_a_tool_schema_as_a_node_does(admin: Admin) -> None:
    await admin.seed()
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document='{"default_model": "small"}')
    )
    request = _asking("hi")
    request.tools.add(name="lookup", parameters_json_schema='{"type": "nonsense"}')
    code, message = await _code(
        admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="acme", request=request))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("tools[0].parameters_json_schema: not a valid JSON Schema"), message
