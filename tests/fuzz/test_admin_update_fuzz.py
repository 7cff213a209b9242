"""Property-based fuzzing of the Admin API's partial and whole updates and node groups:
UpdateTenant (optional fields, label merges), UpdateProvider and UpdateModel (replacing
what they address by id or name), CreateNodeGroup/UpdateNodeGroup (selections, modes,
sealing keys), and governance profiles (documents, versions, diffs, test runs).

As ``test_admin_fuzz``: a defined status and a bounded message naming the field or rule,
nothing written when refused, the server serving after.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.fuzz import admin_harness as h
from tests.fuzz.conftest import ADMIN_EXAMPLES

OK = grpc.StatusCode.OK
_maybe = st.none() | st.booleans()


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=h.mostly(
        {
            "tenant": st.sampled_from(["acme", "ID"]),
            "tier": st.none() | st.sampled_from(["gold", "silver", ""]),
            "active": _maybe,
            "labels": st.sampled_from([{}, {"team": "a"}, {"team": ""}]),
            "replace_labels": st.booleans(),
            "evidence_content": st.none() | st.sampled_from([0, 1]),
            "evidence_spool_full": st.none() | st.sampled_from([0, 1]),
        },
        {
            "tenant": h.odd_text,
            "tier": h.odd_text,
            "labels": h.str_maps,
            "evidence_content": h.small_enum,
            "evidence_spool_full": h.small_enum,
        },
    )
)
async def test_update_tenant(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any]
) -> None:
    if fields["tenant"] == "ID":
        fields["tenant"] = (await seeded.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))).id
    before = await seeded.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    request = admin_pb2.UpdateTenantRequest(**{k: v for k, v in fields.items() if v is not None})
    code, reply = await h.check_write(
        seeded, control_plane.database_url, lambda: seeded.UpdateTenant(request)
    )
    if code == OK:
        assert reply.id == before.id
        if fields["tier"] is not None:
            assert reply.tier == fields["tier"]
        expected = (
            dict(fields["labels"]) if fields["replace_labels"] else {**before.labels, **fields["labels"]}
        )
        assert {k: v for k, v in reply.labels.items() if v} == {k: v for k, v in expected.items() if v}
        # Back to as it was, so every example starts alike.
        await seeded.UpdateTenant(
            admin_pb2.UpdateTenantRequest(
                tenant=before.id,
                tier=before.tier,
                active=True,
                labels=dict(before.labels),
                replace_labels=True,
            )
        )


_secret_refs = st.one_of(
    st.none(),
    st.builds(snapshot_pb2.SecretRef, env=st.sampled_from(["SIGNALBOX_CRED_SIM"]) | h.odd_text),
    st.builds(snapshot_pb2.SecretRef, file=h.odd_text),
)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=h.mostly(
        {
            "id": st.sampled_from(["", "ID"]),
            "name": st.sampled_from(["sim"]),
            "type": st.sampled_from(["simulated"]),
            "base_url": st.sampled_from(["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v2"]),
            "credential": st.just(snapshot_pb2.SecretRef(env="SIGNALBOX_CRED_SIM")),
            "settings": st.sampled_from([{}, {"a": "b"}]),
            "timeout_ms": st.sampled_from([0, 1000]),
            "location": st.sampled_from([0, 1]),
            "site": st.sampled_from(["", "eu-1"]),
        },
        {
            "id": st.sampled_from(["00000000-0000-0000-0000-000000000000"]) | h.odd_text,
            "name": h.names,
            "type": st.sampled_from(["openai_compatible", "nope"]) | h.odd_text,
            "base_url": st.sampled_from(["", "ftp://x", "https://u:p@h/"]) | h.odd_text,
            "credential": _secret_refs,
            "settings": h.str_maps,
            "timeout_ms": h.uint32,
            "location": h.small_enum,
            "site": h.odd_text,
        },
    )
)
async def test_update_provider(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any]
) -> None:
    before = (await seeded.ListProviders(admin_pb2.ListProvidersRequest())).providers[0]
    if fields["id"] == "ID":
        fields["id"] = before.id
    request = admin_pb2.UpdateProviderRequest(
        provider=admin_pb2.Provider(**{k: v for k, v in fields.items() if v is not None})
    )
    code, reply = await h.check_write(
        seeded, control_plane.database_url, lambda: seeded.UpdateProvider(request)
    )
    if code == OK:
        assert reply.id == before.id
        await seeded.UpdateProvider(admin_pb2.UpdateProviderRequest(provider=before))


_deployments = st.lists(
    st.builds(
        admin_pb2.Deployment,
        id=st.sampled_from([""]) | h.odd_text,
        provider=st.sampled_from(["sim"]) | h.odd_text,
        upstream_model=st.sampled_from(["m-v1"]) | h.odd_text,
        weight=h.uint32,
    ),
    max_size=3,
)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=h.mostly(
        {
            "id": st.sampled_from(["", "ID"]),
            "alias": st.sampled_from(["small"]),
            "deployments": st.just([admin_pb2.Deployment(provider="sim", upstream_model="small-v1")]),
            "capabilities": st.sampled_from([[1], [1, 2]]),
            "context_window": st.sampled_from([0, 8192]),
            "max_output_tokens": st.sampled_from([0, 1024]),
            "input_price_nanos_per_mtok": st.sampled_from([0, 100]),
            "certified_for": st.sampled_from([[], [1]]),
            "certifications": st.sampled_from([[], ["iso"]]),
            "attributes": st.sampled_from([{}, {"a": "b"}]),
        },
        {
            "id": st.sampled_from(["00000000-0000-0000-0000-000000000000"]) | h.odd_text,
            "alias": st.sampled_from(["large"]) | h.names,
            "deployments": _deployments,
            "capabilities": st.lists(h.small_enum, max_size=3),
            "context_window": h.uint32,
            "max_output_tokens": h.uint32,
            "input_price_nanos_per_mtok": st.integers(-(2**63), 2**63 - 1),
            "certified_for": st.lists(h.small_enum, max_size=2),
            "certifications": st.lists(h.odd_text, max_size=2),
            "attributes": h.str_maps,
        },
    )
)
async def test_update_model(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any]
) -> None:
    models = (await seeded.ListModels(admin_pb2.ListModelsRequest())).models
    before = next(m for m in models if m.alias == "small")
    if fields["id"] == "ID":
        fields["id"] = before.id
    request = admin_pb2.UpdateModelRequest(model=admin_pb2.Model(**fields))
    code, _ = await h.check_write(seeded, control_plane.database_url, lambda: seeded.UpdateModel(request))
    if code == OK:
        await seeded.UpdateModel(admin_pb2.UpdateModelRequest(model=before))


def _selection(choices: st.SearchStrategy[str]) -> st.SearchStrategy[admin_pb2.Selection | None]:
    return st.one_of(
        st.none(),
        st.builds(admin_pb2.Selection, all=st.booleans(), names=st.lists(choices, max_size=3)),
    )


_modes = st.sampled_from([0, 1, 2, 3])
_sealing = st.sampled_from([b"", bytes(32), b"\x01" * 32]) | st.binary(max_size=64)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=h.mostly(
        {
            "name": st.sampled_from(["edge", "edge-2"]),
            "mode": _modes,
            "site": st.sampled_from(["", "eu-1"]),
            "deployment": st.sampled_from(["", "prod"]),
            "tenants": _selection(st.sampled_from(["acme"])),
            "providers": _selection(st.sampled_from(["sim"])),
            "models": _selection(st.sampled_from(["small", "large"])),
            "sealing_public_key": st.sampled_from([b"", b"\x01" * 32]),
        },
        {
            "name": st.sampled_from(["default", "a" * 63, "a" * 64, "Edge", "-"]) | h.names,
            "mode": h.small_enum,
            "site": h.odd_text,
            "deployment": h.odd_text,
            "tenants": _selection(h.odd_text),
            "providers": _selection(h.odd_text),
            "models": _selection(h.odd_text),
            "sealing_public_key": _sealing,
        },
    ),
    update=st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "mode": h.small_enum,
            "site": h.odd_text,
            "deployment": h.odd_text,
            "tenants": _selection(st.sampled_from(["acme"]) | h.odd_text),
            "providers": _selection(st.sampled_from(["sim"]) | h.odd_text),
            "models": _selection(st.sampled_from(["small"]) | h.odd_text),
            "sealing_public_key": _sealing,
        },
    ),
)
async def test_create_and_update_node_group(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any], update: dict[str, Any] | None
) -> None:
    group = admin_pb2.NodeGroup(**{k: v for k, v in fields.items() if v is not None})
    code, reply = await h.check_write(
        seeded,
        control_plane.database_url,
        lambda: seeded.CreateNodeGroup(admin_pb2.CreateNodeGroupRequest(group=group)),
    )
    name = reply.name if code == OK else "default"
    if update is not None:
        request = admin_pb2.UpdateNodeGroupRequest(
            name=name, **{k: v for k, v in update.items() if v is not None}
        )
        await h.check_write(seeded, control_plane.database_url, lambda: seeded.UpdateNodeGroup(request))
    get = admin_pb2.GetNodeGroupRequest(name=fields["name"])
    await h.check_read(seeded, control_plane.database_url, lambda: seeded.GetNodeGroup(get))
    if code == OK:
        delete = admin_pb2.DeleteNodeGroupRequest(name=name)
        await h.check_write(seeded, control_plane.database_url, lambda: seeded.DeleteNodeGroup(delete))


# ---- governance profiles ----

_rules = st.lists(
    st.fixed_dictionaries(
        {
            "name": h.names,
            "detector": st.sampled_from(["email", "iban", "terms", "regex", "credential", "nope"]),
        },
        optional={
            "action": st.sampled_from(["block", "redact", "mask", "classify", "flag", "x"]),
            "options": st.fixed_dictionaries(
                {},
                optional={
                    "terms": st.lists(h.odd_text, max_size=3),
                    "patterns": st.lists(
                        st.sampled_from(
                            ["(a+)+$", "a{1000}{1000}", "[", "(?P<x>a)(?P=x)", "\\d+", "a*", "\\b"]
                        )
                        | st.text(h.chars, max_size=12),
                        max_size=3,
                    ),
                    "case_insensitive": h.json_values,
                    "kind": h.odd_text,
                    "countries": st.lists(st.sampled_from(["DE", "XX"]) | h.odd_text, max_size=2),
                },
            )
            | h.json_values,
            "placeholder": h.odd_text,
            "data_class": st.sampled_from(["confidential", "public", "nope"]) | h.odd_text,
        },
    ),
    max_size=3,
)
_profiles = st.one_of(
    st.builds(
        lambda i, o, d: json.dumps({"input": {"rules": i}, "output": {"rules": o}, "description": d}),
        _rules,
        _rules,
        h.odd_text,
    ),
    st.builds(json.dumps, h.json_values),
    st.text(h.chars, max_size=100),
    st.sampled_from(
        [
            "a: &a [x, x]\nb: [*a, *a]\n",
            "input: !!python/object/apply:os.system [ls]",
            "input:\n  rules: " + "[" * 3000,
            "x" * (256 * 1024 + 1),
        ]
    ),
)


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    tenant=st.sampled_from(["acme", ""]) | h.odd_text,
    document=_profiles,
    version=st.sampled_from([0, 1, 2]) | h.uint64,
    from_version=st.sampled_from([0, 1]) | h.uint64,
    fmt=st.sampled_from(["", "json", "yaml"]) | h.odd_text,
    text=st.sampled_from(["mail me at a@b.de", "DE89 3704 0044 0532 0130 00"]) | h.odd_text,
    stage=st.sampled_from(["", "input", "output"]) | h.odd_text,
)
async def test_governance_profiles(
    seeded: Admin,
    control_plane: RunningControlPlane,
    tenant: str,
    document: str,
    version: int,
    from_version: int,
    fmt: str,
    text: str,
    stage: str,
) -> None:
    url = control_plane.database_url
    apply = admin_pb2.ApplyGovernanceProfileRequest(tenant=tenant, document=document)
    await h.check_write(seeded, url, lambda: seeded.ApplyGovernanceProfile(apply))
    get = admin_pb2.GetGovernanceProfileRequest(tenant=tenant, version=version)
    await h.check_read(seeded, url, lambda: seeded.GetGovernanceProfile(get))
    history = admin_pb2.ListGovernanceProfileHistoryRequest(tenant=tenant)
    await h.check_read(seeded, url, lambda: seeded.ListGovernanceProfileHistory(history))
    diff = admin_pb2.DiffGovernanceProfileRequest(
        tenant=tenant, from_version=from_version, to_version=version, format=fmt
    )
    await h.check_read(seeded, url, lambda: seeded.DiffGovernanceProfile(diff))
    test = admin_pb2.TestGovernanceProfileRequest(tenant=tenant, text=text, stage=stage)
    code, reply = await h.check_read(seeded, url, lambda: seeded.TestGovernanceProfile(test))
    if code == OK and reply.blocked_by:
        assert not reply.result_text
