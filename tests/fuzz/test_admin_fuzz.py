"""Property-based fuzzing of the Admin API against a real control plane on real PostgreSQL.

Generated requests with odd strings (NUL, control characters, huge, any Unicode), huge
integers, timestamps out of range and hostile policy documents (deep nesting, anchors
and aliases, random text). For every one: only a defined status (never UNKNOWN or
INTERNAL), a bounded message, nothing half-written (a refused create leaves every list
as it was; an accepted one adds exactly its row), and the server still serves.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2
from tests.controlplane.conftest import Admin
from tests.fuzz.admin_harness import (
    chars,
    int64,
    json_values,
    names,
    odd_text,
    small_enum,
    str_maps,
    timestamps,
    uint32,
)
from tests.fuzz.conftest import ADMIN_EXAMPLES

DEFINED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}
MESSAGE_BYTES = 2048

# ---- strategies ----


def _nested(depth: int, kind: str) -> str:
    if kind == "json-list":
        return "[" * depth + "]" * depth
    if kind == "json-object":
        return '{"rules":' * depth + "1" + "}" * depth
    if kind == "yaml-block":
        return "\n".join("  " * i + "k:" for i in range(depth)) + " 1"
    return "- " * depth + "x"


_policy_like = st.fixed_dictionaries(
    {},
    optional={
        "default_model": st.sampled_from(["small", "large", "nope"]) | odd_text,
        "allowed_models": st.lists(st.sampled_from(["small", "large"]) | odd_text, max_size=3),
        "rules": st.lists(
            st.fixed_dictionaries(
                {"name": names},
                optional={
                    "models": st.lists(st.sampled_from(["small", "large"]), max_size=2),
                    "strategy": st.sampled_from(["priority", "cheapest", "weighted", "x"]),
                    "weights": st.dictionaries(st.sampled_from(["small", "large"]), st.integers(-5, 2**70)),
                },
            ),
            max_size=2,
        ),
        "retry": st.fixed_dictionaries({}, optional={"max_attempts": st.integers(-(2**65), 2**65)}),
        "constraints": json_values,
    },
)
documents = st.one_of(
    st.builds(json.dumps, _policy_like),
    st.builds(json.dumps, json_values),
    st.text(chars, max_size=200),
    st.builds(
        _nested, st.integers(1, 1500), st.sampled_from(["json-list", "json-object", "yaml-block", "yaml-seq"])
    ),
    st.sampled_from(
        [
            "a: &a [x, x]\nb: [*a, *a]\n",
            "default_model: &m small\nallowed_models: [*m]\n",
            "<<: {default_model: small}",
            "default_model: !!python/object/apply:os.system [ls]",
            "? [a, b]\n: c",
            "a: 1\n---\nb: 2",
            "default_model: small\nretry: {max_attempts: " + "9" * 5000 + "}",
            "created: 2024-02-30",
            "default_model: .nan",
            "{1: 2}",
            "x" * (1024 * 1024 + 1),
        ]
    ),
)

# ---- the harness ----


async def _call(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any]:
    """(OK, response) or (status, message), holding the status and message to the contract."""
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
    assert code in DEFINED, f"{code.name}: {details[:300]}"
    assert len(details.encode()) < MESSAGE_BYTES, f"{len(details.encode())}-byte message"
    return code, details


async def _still_serves(admin: Admin) -> None:
    tenant = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    assert tenant.name == "acme"


async def _check_create(
    admin: Admin,
    call: Callable[[], Awaitable[Any]],
    listing: Callable[[], Awaitable[list[str]]],
    key: Callable[[Any], str],
) -> None:
    """A refused create leaves the list as it was; an accepted one adds exactly its entry."""
    before = await listing()
    # A grpc.aio call starts when the stub is called: only now.
    code, response = await _call(call())
    after = await listing()
    if code == grpc.StatusCode.OK:
        assert sorted(after) == sorted([*before, key(response)])
    else:
        assert after == before
    await _still_serves(admin)


# ---- the properties ----


@settings(max_examples=ADMIN_EXAMPLES)
@given(name=names, tier=odd_text, labels=str_maps)
async def test_create_tenant(seeded: Admin, name: str, tier: str, labels: dict[str, str]) -> None:
    async def listing() -> list[str]:
        return [t.id for t in (await seeded.ListTenants(admin_pb2.ListTenantsRequest())).tenants]

    request = admin_pb2.CreateTenantRequest(name=name, tier=tier, labels=labels)
    await _check_create(seeded, lambda: seeded.CreateTenant(request), listing, lambda t: t.id)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    tenant=st.sampled_from(["acme"]) | odd_text,
    name=odd_text,
    scopes=st.lists(st.sampled_from(["op:chat", "model:small", "task:x"]) | odd_text, max_size=3),
    expires=st.none() | timestamps,
)
async def test_create_api_key(
    seeded: Admin, tenant: str, name: str, scopes: list[str], expires: Timestamp | None
) -> None:
    async def listing() -> list[str]:
        return [k.id for k in (await seeded.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys]

    request = admin_pb2.CreateApiKeyRequest(tenant=tenant, name=name, scopes=scopes, expires_at=expires)
    await _check_create(seeded, lambda: seeded.CreateApiKey(request), listing, lambda r: r.key.id)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    name=names,
    type_=st.sampled_from(["simulated", "openai_compatible"]) | odd_text,
    base_url=st.sampled_from(["", "http://127.0.0.1:9/v1", "https://u:p@h/"]) | odd_text,
    credential=st.one_of(
        st.none(),
        st.builds(snapshot_pb2.SecretRef, env=st.sampled_from(["SIM_KEY"]) | odd_text),
        st.builds(snapshot_pb2.SecretRef, file=odd_text),
    ),
    settings_=str_maps,
    timeout_ms=uint32,
    location=small_enum,
    site=odd_text,
)
async def test_create_provider(
    seeded: Admin,
    name: str,
    type_: str,
    base_url: str,
    credential: snapshot_pb2.SecretRef | None,
    settings_: dict[str, str],
    timeout_ms: int,
    location: int,
    site: str,
) -> None:
    async def listing() -> list[str]:
        return [p.id for p in (await seeded.ListProviders(admin_pb2.ListProvidersRequest())).providers]

    provider = admin_pb2.Provider(
        name=name,
        type=type_,
        base_url=base_url,
        credential=credential,
        settings=settings_,
        timeout_ms=timeout_ms,
        location=location,  # type: ignore[arg-type]
        site=site,
        region=site[::-1],
    )
    request = admin_pb2.CreateProviderRequest(provider=provider)
    await _check_create(seeded, lambda: seeded.CreateProvider(request), listing, lambda p: p.id)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    alias=names,
    deployments=st.lists(
        st.builds(
            admin_pb2.Deployment,
            provider=st.sampled_from(["sim"]) | odd_text,
            upstream_model=st.sampled_from(["m-v1"]) | odd_text,
            weight=uint32,
        ),
        max_size=3,
    ),
    capabilities=st.lists(small_enum, max_size=3),
    context_window=uint32,
    price=int64,
    certified_for=st.lists(small_enum, max_size=2),
    certifications=st.lists(odd_text, max_size=2),
    latency=uint32,
    attributes=str_maps,
)
async def test_create_model(
    seeded: Admin,
    alias: str,
    deployments: list[admin_pb2.Deployment],
    capabilities: list[int],
    context_window: int,
    price: int,
    certified_for: list[int],
    certifications: list[str],
    latency: int,
    attributes: dict[str, str],
) -> None:
    async def listing() -> list[str]:
        return [m.id for m in (await seeded.ListModels(admin_pb2.ListModelsRequest())).models]

    model = admin_pb2.Model(
        alias=alias,
        deployments=deployments,
        capabilities=capabilities,  # type: ignore[arg-type]
        context_window=context_window,
        max_output_tokens=context_window // 2,
        input_price_nanos_per_mtok=price,
        output_price_nanos_per_mtok=price,
        certified_for=certified_for,  # type: ignore[arg-type]
        certifications=certifications,
        typical_latency_ms=latency,
        attributes=attributes,
    )
    await _check_create(
        seeded, lambda: seeded.CreateModel(admin_pb2.CreateModelRequest(model=model)), listing, lambda m: m.id
    )


@settings(max_examples=ADMIN_EXAMPLES)
@given(tenant=st.sampled_from(["acme", ""]) | odd_text, document=documents)
async def test_apply_policy(seeded: Admin, tenant: str, document: str) -> None:
    async def listing() -> list[str]:
        rows = []
        for who in ("acme", ""):
            history = await seeded.ListPolicyHistory(admin_pb2.ListPolicyHistoryRequest(tenant=who))
            rows += [p.id for p in history.versions]
        return rows

    request = admin_pb2.ApplyPolicyRequest(tenant=tenant, document=document)
    await _check_create(seeded, lambda: seeded.ApplyPolicy(request), listing, lambda p: p.id)


_infer_requests = st.builds(
    infer_pb2.InferRequest,
    model=st.sampled_from(["", "small", "large"]) | odd_text,
    messages=st.lists(
        st.builds(
            infer_pb2.Message,
            role=small_enum,
            content=st.lists(st.builds(infer_pb2.ContentPart, text=odd_text), max_size=2),
            name=odd_text,
        ),
        max_size=3,
    ),
    tools=st.lists(
        st.builds(infer_pb2.ToolDefinition, name=names, parameters_json_schema=documents), max_size=1
    ),
    params=st.builds(
        infer_pb2.GenerationParams,
        max_output_tokens=uint32,
        temperature=st.floats(allow_nan=True),
        stop=st.lists(odd_text, max_size=2),
        seed=int64,
    ),
    response_format=st.builds(infer_pb2.ResponseFormat, type=small_enum, json_schema=documents),
    required_capabilities=st.lists(small_enum, max_size=2),
    task=odd_text,
    data_classification=small_enum,
    metadata=str_maps,
    correlation_id=odd_text,
)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    tenant=st.sampled_from(["acme"]) | odd_text,
    request=_infer_requests,
    mode=small_enum,
    site=odd_text,
    node_group=odd_text,
)
async def test_explain_route(
    seeded: Admin, tenant: str, request: infer_pb2.InferRequest, mode: int, site: str, node_group: str
) -> None:
    explain = admin_pb2.ExplainRouteRequest(
        tenant=tenant,
        request=request,
        mode=mode,  # type: ignore[arg-type]
        site=site,
        node_group=node_group,
    )
    version = await seeded.latest_version()
    code, response = await _call(seeded.ExplainRoute(explain))
    if code == grpc.StatusCode.OK:
        assert response.decision.model or not response.plan
    # A dry run writes nothing.
    assert await seeded.latest_version() == version
    await _still_serves(seeded)
