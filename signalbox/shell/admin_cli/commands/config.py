"""``signalbox admin provider|model|policy|route``: what a request is routed to. Providers,
models, tenant policies, and the explanation of a routing decision."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
from pathlib import Path

from dataplane.providers.sealing import MAX_SEALED_BYTES, MIN_SEALED_BYTES, aad, key_id, seal
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2
from signalbox.shell.admin_cli.commands.base import Stub, count, enum_value, pairs, read_text_input
from signalbox.shell.admin_cli.output import (
    MODEL_COLUMNS,
    POLICY_COLUMNS,
    PROVIDER_COLUMNS,
    Output,
    deleted,
    explanation,
    model_row,
    policy_row,
    provider_row,
)

MAX_POLICY_BYTES = 1024 * 1024
"""Largest policy document read (the control plane refuses a larger one)."""


# ---- providers ----


def _provider(ns: argparse.Namespace) -> admin_pb2.Provider:
    if sum(bool(x) for x in (ns.credential_env, ns.credential_file, ns.sealed_credential_file)) > 1:
        raise SystemExit("--credential-env, --credential-file and --sealed-credential-file: give one at most")
    if bool(ns.sealed_credential_file) != bool(ns.sealed_for_group):
        raise SystemExit("--sealed-credential-file and --sealed-for-group: give both or neither")
    credential = snapshot_pb2.SecretRef()
    if ns.credential_env:
        credential.env = ns.credential_env
    elif ns.credential_file:
        credential.file = ns.credential_file
    return admin_pb2.Provider(
        name=ns.name,
        type=ns.type,
        base_url=ns.base_url or "",
        credential=credential,
        settings=pairs(ns.setting, "--setting"),
        timeout_ms=ns.timeout_ms or 0,
        location=enum_value(snapshot_pb2.ProviderLocation, "PROVIDER_LOCATION_", ns.location, "--location"),
        site=ns.site or "",
        region=ns.region or "",
        jurisdiction=ns.jurisdiction or "",
    )


def _read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        return f.read(limit)


async def _seal(stub: Stub, ns: argparse.Namespace, provider: admin_pb2.Provider) -> None:
    """Seal the local credential file to the group's public key, bound to the provider's id:
    the credential leaves this machine only as ciphertext."""
    path = Path(ns.sealed_credential_file)
    try:
        raw = await asyncio.to_thread(_read_bounded, path, MAX_SEALED_BYTES + 1)
    except OSError as exc:
        raise SystemExit(f"--sealed-credential-file: cannot read {path}: {exc.strerror}") from None
    credential = raw.strip()
    if not credential or len(raw) > MAX_SEALED_BYTES - MIN_SEALED_BYTES:
        raise SystemExit(
            f"--sealed-credential-file: must hold 1 to {MAX_SEALED_BYTES - MIN_SEALED_BYTES} bytes"
        )
    group = await stub.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name=ns.sealed_for_group))
    if not group.sealing_public_key:
        raise SystemExit(f"--sealed-for-group: node group {group.name} has no sealing public key")
    listed = await stub.ListProviders(admin_pb2.ListProvidersRequest())
    existing = [p for p in listed.providers if p.name == provider.name]
    if not existing:
        raise SystemExit(
            f"provider {provider.name}: create it first (without a credential), then seal one with "
            "`provider update`: the seal binds the provider's id"
        )
    public = bytes(group.sealing_public_key)
    provider.credential.sealed.CopyFrom(
        snapshot_pb2.SealedSecret(
            node_group=group.name,
            key_id=key_id(public),
            ciphertext=seal(public, credential, aad(group.name, existing[0].id)),
        )
    )


async def provider_create(stub: Stub, ns: argparse.Namespace) -> Output:
    if ns.sealed_credential_file:
        raise SystemExit(
            "--sealed-credential-file: create the provider first, then seal with `provider update` "
            "(the seal binds the provider's id)"
        )
    p = await stub.CreateProvider(admin_pb2.CreateProviderRequest(provider=_provider(ns)))
    return Output(p, PROVIDER_COLUMNS, [provider_row(p)])


async def provider_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListProviders(admin_pb2.ListProvidersRequest())
    return Output(r, PROVIDER_COLUMNS, [provider_row(p) for p in r.providers])


async def provider_update(stub: Stub, ns: argparse.Namespace) -> Output:
    provider = _provider(ns)
    if ns.sealed_credential_file:
        await _seal(stub, ns, provider)
    p = await stub.UpdateProvider(admin_pb2.UpdateProviderRequest(provider=provider))
    return Output(p, PROVIDER_COLUMNS, [provider_row(p)])


async def provider_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteProvider(admin_pb2.DeleteProviderRequest(provider=ns.name)))


# ---- models ----


def _deployment(text: str) -> admin_pb2.Deployment:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise SystemExit(f"--deployment: expected PROVIDER:UPSTREAM_MODEL[:WEIGHT], got {text!r}")
    try:
        weight = count(parts[2]) if len(parts) == 3 else 1
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"--deployment: weight of {text!r}: {exc}") from None
    return admin_pb2.Deployment(provider=parts[0], upstream_model=parts[1], weight=weight)


def _model(ns: argparse.Namespace) -> admin_pb2.Model:
    return admin_pb2.Model(
        alias=ns.alias,
        deployments=[_deployment(d) for d in ns.deployment or ()],
        capabilities=[
            enum_value(common_pb2.Capability, "CAPABILITY_", c, "--capability") for c in ns.capability or ()
        ],
        context_window=ns.context_window or 0,
        max_output_tokens=ns.max_output_tokens or 0,
        input_price_nanos_per_mtok=ns.input_price or 0,
        output_price_nanos_per_mtok=ns.output_price or 0,
        attributes=pairs(ns.attribute, "--attribute"),
    )


async def model_create(stub: Stub, ns: argparse.Namespace) -> Output:
    m = await stub.CreateModel(admin_pb2.CreateModelRequest(model=_model(ns)))
    return Output(m, MODEL_COLUMNS, [model_row(m)])


async def model_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListModels(admin_pb2.ListModelsRequest())
    return Output(r, MODEL_COLUMNS, [model_row(m) for m in r.models])


async def model_update(stub: Stub, ns: argparse.Namespace) -> Output:
    m = await stub.UpdateModel(admin_pb2.UpdateModelRequest(model=_model(ns)))
    return Output(m, MODEL_COLUMNS, [model_row(m)])


async def model_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteModel(admin_pb2.DeleteModelRequest(model=ns.alias)))


# ---- policies ----


async def policy_apply(stub: Stub, ns: argparse.Namespace) -> Output:
    document = await asyncio.to_thread(read_text_input, ns.file, "--file", MAX_POLICY_BYTES)
    p = await stub.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=ns.tenant or "", document=document))
    return Output(p, POLICY_COLUMNS, [policy_row(p)])


async def policy_get(stub: Stub, ns: argparse.Namespace) -> Output:
    p = await stub.GetPolicy(admin_pb2.GetPolicyRequest(tenant=ns.tenant or "", version=ns.version or 0))
    return Output(p, POLICY_COLUMNS, [policy_row(p)])


async def policy_history(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListPolicyHistory(admin_pb2.ListPolicyHistoryRequest(tenant=ns.tenant or ""))
    return Output(r, POLICY_COLUMNS, [policy_row(p) for p in r.versions])


def _pretty_lines(p: admin_pb2.Policy) -> list[str]:
    pretty = json.dumps(json.loads(p.document_json), indent=2, sort_keys=True, ensure_ascii=False)
    return (pretty + "\n").splitlines(keepends=True)


async def policy_diff(stub: Stub, ns: argparse.Namespace) -> Output:
    tenant = ns.tenant or ""
    newer = await stub.GetPolicy(admin_pb2.GetPolicyRequest(tenant=tenant, version=ns.to or 0))
    older_version = ns.from_
    if older_version is None:
        # The stored version before it (deletion markers have no document to compare).
        history = await stub.ListPolicyHistory(admin_pb2.ListPolicyHistoryRequest(tenant=tenant))
        earlier = [p.version for p in history.versions if p.version < newer.version and p.document_json]
        if not earlier:
            raise SystemExit(f"policy diff: no version before v{newer.version} to compare with")
        older_version = earlier[-1]
    older = await stub.GetPolicy(admin_pb2.GetPolicyRequest(tenant=tenant, version=older_version))
    name = f"policy of {tenant}" if tenant else "platform default policy"
    diff = difflib.unified_diff(
        _pretty_lines(older),
        _pretty_lines(newer),
        fromfile=f"{name} v{older.version}",
        tofile=f"{name} v{newer.version}",
    )
    return Output(admin_pb2.ListPolicyHistoryResponse(versions=[older, newer]), text="".join(diff))


async def policy_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeletePolicy(admin_pb2.DeletePolicyRequest(tenant=ns.tenant or "")))


# ---- routing ----


async def route_explain(stub: Stub, ns: argparse.Namespace) -> Output:
    request = infer_pb2.InferRequest(
        model=ns.model or "",
        task=ns.task or "",
        required_capabilities=[
            enum_value(common_pb2.Capability, "CAPABILITY_", c, "--capability") for c in ns.capability or ()
        ],
        data_classification=enum_value(
            common_pb2.DataClassification,
            "DATA_CLASSIFICATION_",
            ns.data_classification or "unspecified",
            "--data-classification",
        ),
        metadata=pairs(ns.metadata, "--metadata"),
        correlation_id=ns.correlation_id or "",
        messages=[
            infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text=text)])
            for text in ns.message or ()
        ],
    )
    if ns.max_output_tokens is not None:
        request.params.max_output_tokens = ns.max_output_tokens
    r = await stub.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant=ns.tenant, request=request))
    return Output(r, text=explanation(r))
