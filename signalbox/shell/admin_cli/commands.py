"""The ``signalbox admin`` commands, one coroutine per resource and verb: build the Admin
API request from the command line, call it, and say what to print."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from dataplane.evidence import pack
from dataplane.scopes import ScopeSyntaxError, validate_scopes
from dataplane.snapshot.files import atomic_write
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2
from signalbox.shell.admin_cli.output import (
    ENROLL_TOKEN_COLUMNS,
    EVIDENCE_CHAIN_COLUMNS,
    EVIDENCE_COLUMNS,
    EVIDENCE_CONTENT_FLAG,
    EVIDENCE_PRUNED_COLUMNS,
    GROUP_COLUMNS,
    KEY_COLUMNS,
    MODEL_COLUMNS,
    NODE_COLUMNS,
    POLICY_COLUMNS,
    PROVIDER_COLUMNS,
    SIGNING_KEY_COLUMNS,
    SNAPSHOT_COLUMNS,
    SNAPSHOT_LIST_COLUMNS,
    SPOOL_FULL_FLAG,
    TENANT_COLUMNS,
    Output,
    deleted,
    enroll_token_row,
    evidence_chain_row,
    evidence_pruned_row,
    evidence_row,
    explanation,
    group_row,
    key_row,
    model_row,
    node_row,
    policy_row,
    provider_row,
    scopes_column,
    signing_key_row,
    snapshot_content,
    snapshot_list_row,
    snapshot_row,
    table,
    tenant_row,
)
from signalbox.shell.admin_cli.output import snapshot_diff as render_diff
from signalbox.shell.progress import records_bar
from signalbox.text import printable

# The AdminService stub with token and deadline bound (``run._with_call_options``); grpc-stubs
# types stubs as synchronous, which grpc.aio ones are not.
Stub = Any
Action = Callable[[Stub, argparse.Namespace], Coroutine[Any, Any, "Output"]]


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _enum(enum: Any, prefix: str, name: str, flag: str) -> Any:  # the enum's ValueType
    try:
        return int(enum.Value(prefix + name.upper().replace("-", "_")))
    except ValueError:
        names: list[str] = list(enum.keys())
        known = ", ".join(n.removeprefix(prefix).lower() for n in names if not n.endswith("UNSPECIFIED"))
        raise SystemExit(f"{flag}: unknown value {name!r} (known: {known})") from None


# ---- tenants ----


async def tenant_create(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.CreateTenantRequest(
        name=ns.name, tier=ns.tier or "", labels=_pairs(ns.label, "--label")
    )
    _set_tenant_evidence(request, ns)
    t = await stub.CreateTenant(request)
    return Output(t, TENANT_COLUMNS, [tenant_row(t)])


async def tenant_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListTenants(admin_pb2.ListTenantsRequest())
    return Output(r, TENANT_COLUMNS, [tenant_row(t) for t in r.tenants])


async def tenant_get(stub: Stub, ns: argparse.Namespace) -> Output:
    t = await stub.GetTenant(admin_pb2.GetTenantRequest(tenant=ns.name))
    return Output(t, TENANT_COLUMNS, [tenant_row(t)])


async def tenant_update(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.UpdateTenantRequest(
        tenant=ns.name, labels=_pairs(ns.label, "--label"), replace_labels=ns.replace_labels
    )
    if ns.tier is not None:
        request.tier = ns.tier
    if ns.active is not None:
        request.active = ns.active
    _set_tenant_evidence(request, ns)
    t = await stub.UpdateTenant(request)
    return Output(t, TENANT_COLUMNS, [tenant_row(t)])


def _set_tenant_evidence(
    request: admin_pb2.CreateTenantRequest | admin_pb2.UpdateTenantRequest, ns: argparse.Namespace
) -> None:
    if ns.evidence_content is not None:
        request.evidence_content = _value_of(EVIDENCE_CONTENT_FLAG, ns.evidence_content)
    if ns.evidence_spool_full is not None:
        request.evidence_spool_full = _value_of(SPOOL_FULL_FLAG, ns.evidence_spool_full)


def _value_of(names: Mapping[Any, str], name: str) -> Any:
    return next(value for value, n in names.items() if n == name)


async def tenant_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant=ns.name)))


# ---- API keys ----


async def key_create(stub: Stub, ns: argparse.Namespace) -> Output:
    scopes = ns.scope or []
    try:
        validate_scopes(scopes)  # the grammar the control plane and nodes apply
    except ScopeSyntaxError as exc:
        raise SystemExit(f"--scope: {exc}") from None
    r = await stub.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant=ns.tenant, name=ns.name or "", scopes=scopes)
    )
    # The secret is the last column, so scripts can take it with `tail -1 | awk '{print $NF}'`.
    return Output(
        r,
        ("id", "tenant", "prefix", "scopes", "secret (shown once)"),
        [(r.key.id, r.key.tenant_id, r.key.prefix, scopes_column(r.key.scopes), r.secret)],
    )


async def import_config(stub: Stub, ns: argparse.Namespace) -> Output:
    """Import a JSON Lines file; the new keys' secrets go to ``--secrets-out`` only.

    The secrets file is created (0600, never over an existing file) before the call, so
    secrets are never returned with nowhere to put them; it is removed if the import fails.
    """
    if not ns.secrets_out:
        raise SystemExit("--secrets-out FILE is required: the new keys' secrets are written there, once")
    try:
        data = await asyncio.to_thread(Path(ns.file).read_bytes)
    except OSError as exc:
        raise SystemExit(f"{ns.file}: cannot read: {exc.strerror}") from None
    out = Path(ns.secrets_out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SystemExit(f"--secrets-out {out}: exists; refusing to overwrite it") from None
    except OSError as exc:
        raise SystemExit(f"--secrets-out {out}: cannot create: {exc.strerror}") from None
    try:
        r = await stub.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data))
        with os.fdopen(fd, "w") as f:
            fd = -1
            for k in r.keys:
                record = {"line": k.line, "id": k.key.id, "tenant_id": k.key.tenant_id, "name": k.key.name}
                f.write(json.dumps(record | {"prefix": k.key.prefix, "secret": k.secret}) + "\n")
    except BaseException:
        if fd >= 0:
            os.close(fd)
        await asyncio.to_thread(out.unlink, missing_ok=True)
        raise
    # What is printed (or --json) never carries a secret.
    summary = admin_pb2.ImportConfigResponse(tenants=r.tenants, snapshot_version=r.snapshot_version)
    text = f"imported {r.tenants} tenants and {len(r.keys)} api keys in snapshot v{r.snapshot_version}"
    return Output(summary, text=f"{text}; secrets written to {out} (mode 0600)\n")


async def key_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant=ns.tenant or ""))
    return Output(r, KEY_COLUMNS, [key_row(k) for k in r.keys])


async def key_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=ns.id)))


# ---- providers ----


def _provider(ns: argparse.Namespace) -> admin_pb2.Provider:
    if ns.credential_env and ns.credential_file:
        raise SystemExit("--credential-env and --credential-file: give one, not both")
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
        settings=_pairs(ns.setting, "--setting"),
        timeout_ms=ns.timeout_ms or 0,
        location=_enum(snapshot_pb2.ProviderLocation, "PROVIDER_LOCATION_", ns.location, "--location"),
        site=ns.site or "",
        region=ns.region or "",
        jurisdiction=ns.jurisdiction or "",
    )


async def provider_create(stub: Stub, ns: argparse.Namespace) -> Output:
    p = await stub.CreateProvider(admin_pb2.CreateProviderRequest(provider=_provider(ns)))
    return Output(p, PROVIDER_COLUMNS, [provider_row(p)])


async def provider_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListProviders(admin_pb2.ListProvidersRequest())
    return Output(r, PROVIDER_COLUMNS, [provider_row(p) for p in r.providers])


async def provider_update(stub: Stub, ns: argparse.Namespace) -> Output:
    p = await stub.UpdateProvider(admin_pb2.UpdateProviderRequest(provider=_provider(ns)))
    return Output(p, PROVIDER_COLUMNS, [provider_row(p)])


async def provider_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteProvider(admin_pb2.DeleteProviderRequest(provider=ns.name)))


# ---- models ----


def _deployment(text: str) -> admin_pb2.Deployment:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise SystemExit(f"--deployment: expected PROVIDER:UPSTREAM_MODEL[:WEIGHT], got {text!r}")
    weight = int(parts[2]) if len(parts) == 3 else 1
    return admin_pb2.Deployment(provider=parts[0], upstream_model=parts[1], weight=weight)


def _model(ns: argparse.Namespace) -> admin_pb2.Model:
    return admin_pb2.Model(
        alias=ns.alias,
        deployments=[_deployment(d) for d in ns.deployment or ()],
        capabilities=[
            _enum(common_pb2.Capability, "CAPABILITY_", c, "--capability") for c in ns.capability or ()
        ],
        context_window=ns.context_window or 0,
        max_output_tokens=ns.max_output_tokens or 0,
        input_price_nanos_per_mtok=ns.input_price or 0,
        output_price_nanos_per_mtok=ns.output_price or 0,
        attributes=_pairs(ns.attribute, "--attribute"),
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
    document = sys.stdin.read() if ns.file == "-" else await asyncio.to_thread(Path(ns.file).read_text)
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


# ---- nodes and snapshots ----


async def node_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListNodes(admin_pb2.ListNodesRequest(group=ns.group or ""))
    return Output(r, NODE_COLUMNS, [node_row(n) for n in r.nodes])


async def node_enroll_token(stub: Stub, ns: argparse.Namespace) -> Output:
    if ns.action == "list":
        r = await stub.ListEnrollTokens(admin_pb2.ListEnrollTokensRequest())
        return Output(r, ENROLL_TOKEN_COLUMNS, [enroll_token_row(t) for t in r.tokens])
    if not ns.group:
        raise SystemExit("node enroll-token: --group: required")
    created = await stub.CreateEnrollToken(
        admin_pb2.CreateEnrollTokenRequest(
            group=ns.group, ttl_seconds=max(1, round(ns.ttl)), mode=ns.mode, site=ns.site
        )
    )
    info = created.info
    print(
        f"enrollment token {info.id} for group {info.group!r}, single use, valid until "
        f"{info.expires_at.ToDatetime():%Y-%m-%d %H:%M:%S} UTC (shown once; give it to the node as "
        "SIGNALBOX_ENROLL_TOKEN or a file, not on its command line):",
        file=sys.stderr,
    )
    # The token alone on stdout, so `TOKEN=$(signalbox admin node enroll-token ...)` works.
    return Output(created, text=created.token + "\n")


async def node_revoke(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RevokeNode(admin_pb2.RevokeNodeRequest(node_id=ns.node_id))
    return Output(r, text=f"revoked {r.revoked_certificates} certificates of node {ns.node_id}\n")


MAX_CSR_FILE_BYTES = 16 * 1024


async def node_certify(stub: Stub, ns: argparse.Namespace) -> Output:
    csr = _read_small(ns.csr, "--csr", MAX_CSR_FILE_BYTES)
    issued = await stub.CertifyNode(
        admin_pb2.CertifyNodeRequest(
            node_id=ns.node_id, csr_pem=csr, group=ns.group, ttl_seconds=round(ns.ttl)
        )
    )
    # The node's certificate first, then the node CA: what `dataplane identity install` reads.
    bundle = issued.certificate_pem.rstrip("\n") + "\n" + issued.ca_pem.rstrip("\n") + "\n"
    until = f"{issued.not_after.ToDatetime():%Y-%m-%d %H:%M:%S} UTC"
    if ns.out is None:
        return Output(issued, text=bundle)
    atomic_write(ns.out, bundle.encode())
    return Output(issued, text=f"certificate {issued.serial} for node {ns.node_id} until {until}: {ns.out}\n")


def _read_small(path: Path, flag: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise SystemExit(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise SystemExit(f"{flag}: {path} is larger than {limit} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise SystemExit(f"{flag}: {path} is not UTF-8 text") from None


async def snapshot_show(stub: Stub, ns: argparse.Namespace) -> Output:
    version = ns.version_arg or ns.version or 0
    s = await stub.GetSnapshot(
        admin_pb2.GetSnapshotRequest(version=version, include_content=True, group=ns.group)
    )
    return Output(s, SNAPSHOT_COLUMNS, [snapshot_row(s)], text=snapshot_content(s))


async def snapshot_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListSnapshots(
        admin_pb2.ListSnapshotsRequest(limit=ns.limit or 0, before=ns.before or 0, group=ns.group)
    )
    out = Output(r, SNAPSHOT_LIST_COLUMNS, [snapshot_list_row(s) for s in r.snapshots])
    if r.next_before:
        out.text = f"{table(out.headers, out.rows)}\n(more: --before {r.next_before})\n"
    return out


async def snapshot_diff(stub: Stub, ns: argparse.Namespace) -> Output:
    d = await stub.DiffSnapshots(
        admin_pb2.DiffSnapshotsRequest(from_version=ns.a, to_version=ns.b, group=ns.group)
    )
    return Output(d, text=render_diff(d))


async def snapshot_rollback(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=ns.version, group=ns.group))
    which = "" if ns.group == "default" else f"group {ns.group} "
    text = f"rolled back {which}to v{r.restored_from}: published v{r.snapshot_version}\n"
    if r.keys_not_restored:
        text += "API keys deleted since stay deleted: " + ", ".join(r.keys_not_restored) + "\n"
    return Output(r, text=text)


# ---- node groups ----


def _selection(names: Sequence[str] | None, every: bool, flag: str) -> admin_pb2.Selection | None:
    """``--FLAG`` (repeatable) lists; ``--all-FLAGs`` selects everything; neither: None."""
    if every and names:
        raise SystemExit(f"--{flag}: not with --all-{flag}s")
    if every:
        return admin_pb2.Selection(all=True)
    return admin_pb2.Selection(names=list(names)) if names else None


def _group_lists(ns: argparse.Namespace) -> dict[str, admin_pb2.Selection]:
    out = {}
    for kind, flag in (("tenants", "tenant"), ("providers", "provider"), ("models", "model")):
        selection = _selection(getattr(ns, kind), getattr(ns, f"all_{kind}"), flag)
        if selection is not None:
            out[kind] = selection
    return out


def _mode(name: str) -> Any:
    return _enum(common_pb2.DeploymentMode, "DEPLOYMENT_MODE_", name, "--mode")


async def group_create(stub: Stub, ns: argparse.Namespace) -> Output:
    group = admin_pb2.NodeGroup(
        name=ns.name, mode=_mode(ns.mode or "cloud"), site=ns.site or "", deployment=ns.deployment or ""
    )
    for kind, selection in _group_lists(ns).items():
        getattr(group, kind).CopyFrom(selection)
    g = await stub.CreateNodeGroup(admin_pb2.CreateNodeGroupRequest(group=group))
    return Output(g, GROUP_COLUMNS, [group_row(g)])


async def group_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListNodeGroups(admin_pb2.ListNodeGroupsRequest())
    return Output(r, GROUP_COLUMNS, [group_row(g) for g in r.groups])


async def group_show(stub: Stub, ns: argparse.Namespace) -> Output:
    g = await stub.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name=ns.name))
    return Output(g, GROUP_COLUMNS, [group_row(g)])


async def group_update(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.UpdateNodeGroupRequest(name=ns.name)
    for kind, selection in _group_lists(ns).items():
        getattr(request, kind).CopyFrom(selection)
    if ns.mode is not None:
        request.mode = _mode(ns.mode)
    if ns.site is not None:
        request.site = ns.site
    if ns.deployment is not None:
        request.deployment = ns.deployment
    g = await stub.UpdateNodeGroup(request)
    return Output(g, GROUP_COLUMNS, [group_row(g)])


async def group_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name=ns.name)))


# ---- signing keys ----


async def signing_key_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListSigningKeys(admin_pb2.ListSigningKeysRequest())
    return Output(r, SIGNING_KEY_COLUMNS, [signing_key_row(k) for k in r.keys])


async def signing_key_rotate(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
    text = f"new active signing key {r.key.key_id} (published v{r.snapshot_version})\n"
    if r.retiring:
        text += "still signing until revoked: " + ", ".join(r.retiring) + "\n"
    return Output(r, text=text)


async def signing_key_revoke(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=ns.key_id))
    return Output(r, text=f"revoked signing key {r.key.key_id} (published v{r.snapshot_version})\n")


# ---- routing ----


async def route_explain(stub: Stub, ns: argparse.Namespace) -> Output:
    request = infer_pb2.InferRequest(
        model=ns.model or "",
        task=ns.task or "",
        required_capabilities=[
            _enum(common_pb2.Capability, "CAPABILITY_", c, "--capability") for c in ns.capability or ()
        ],
        data_classification=_enum(
            common_pb2.DataClassification,
            "DATA_CLASSIFICATION_",
            ns.data_classification or "unspecified",
            "--data-classification",
        ),
        metadata=_pairs(ns.metadata, "--metadata"),
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


# ---- evidence store ----


async def evidence_query(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.QueryEvidenceRequest(
        correlation_id=ns.correlation_id or "",
        tenant_id=ns.tenant or "",
        api_key_id=ns.api_key or "",
        model=ns.model or "",
        outcome=ns.outcome or "",
        limit=ns.limit or 0,
    )
    if ns.since is not None:
        request.since.FromDatetime(ns.since)
    if ns.until is not None:
        request.until.FromDatetime(ns.until)
    r = await stub.QueryEvidence(request)
    output = Output(r, EVIDENCE_COLUMNS, [evidence_row(x) for x in r.records])
    for pruned in r.pruned:
        print(
            f"(chain {printable(pruned.chain_id, 100)}: records 1..{pruned.last_seq}, older than "
            f"{pruned.pruned_before.ToDatetime(UTC).isoformat()}, were pruned; --json has the signed statement)",
            file=sys.stderr,
        )
    if r.truncated:
        print(
            f"(more records match: raise --limit above {len(r.records)} or narrow the filters)",
            file=sys.stderr,
        )
    return output


async def evidence_prune(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.PruneEvidenceRequest()
    request.before.FromDatetime(ns.before)
    r = await stub.PruneEvidence(request)
    return Output(r, EVIDENCE_PRUNED_COLUMNS, [evidence_pruned_row(x) for x in r.ranges])


async def evidence_chains(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListEvidenceChains(admin_pb2.ListEvidenceChainsRequest())
    return Output(r, EVIDENCE_CHAIN_COLUMNS, [evidence_chain_row(c) for c in r.chains])


# ---- evidence packs ----


async def evidence_export(stub: Stub, ns: argparse.Namespace) -> Output:
    """Write the pack to ``--out`` through a private temporary file renamed at the end: an
    error or an interruption leaves nothing (not a half pack) behind."""
    request = admin_pb2.ExportEvidenceRequest(
        correlation_id=ns.correlation_id or "",
        tenant_id=ns.tenant or "",
        api_key_id=ns.api_key or "",
        model=ns.model or "",
        outcome=ns.outcome or "",
    )
    if ns.since is not None:
        request.since.FromDatetime(ns.since)
    if ns.until is not None:
        request.until.FromDatetime(ns.until)
    out = Path(ns.out)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    first: admin_pb2.EvidencePackChunk | None = None
    try:
        with os.fdopen(fd, "wb") as f, records_bar(None, "export") as bar:
            async for chunk in stub.ExportEvidence(request):
                if first is None:
                    first = chunk
                    bar.reset(total=chunk.records)
                    continue
                f.write(chunk.data)
                bar.update(min(chunk.data.count(b"\n"), bar.total - bar.n))
            f.flush()
            os.fsync(f.fileno())
        if first is None:
            raise OSError("the control plane ended the export without a pack")
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return Output(first, text=f"wrote {out}: {first.records} records (pack {first.pack_id})\n")


IMPORT_CHUNK_BYTES = 1024 * 1024
IMPORTED_COLUMNS = ("chain", "stored", "duplicates", "head", "checkpoints", "error")


async def evidence_import(stub: Stub, ns: argparse.Namespace) -> Output:
    """Stream the pack in pieces; one row per chain: what was stored, already held, the head."""
    path = Path(ns.pack)
    f = await asyncio.to_thread(open, path, "rb")
    with f, records_bar(pack.record_count_hint(path), "import") as bar:

        async def chunks() -> AsyncIterator[admin_pb2.EvidencePackChunk]:
            while data := await asyncio.to_thread(f.read, IMPORT_CHUNK_BYTES):
                bar.update(min(data.count(b"\n"), max(0, (bar.total or 0) - bar.n)))
                yield admin_pb2.EvidencePackChunk(data=data)

        r = await stub.ImportEvidence(chunks())
    rows = [
        (
            c.chain_id,
            c.stored,
            c.duplicates,
            c.head_seq,
            c.checkpoints,
            f"seq {c.error_seq}: {c.error}" if c.error else "-",
        )
        for c in r.chains
    ]
    return Output(r, IMPORTED_COLUMNS, rows)


# ---- caller identities ----

JWT_COLUMNS = ("id", "tenant", "issuer", "audiences", "algorithms", "key_ids", "subject", "tier", "scopes")
MTLS_COLUMNS = ("id", "tenant", "uri", "match", "scopes")


def _jwt_row(i: admin_pb2.JwtIssuerInfo) -> tuple[str, ...]:
    j = i.issuer
    return (
        i.id,
        i.tenant_id,
        j.issuer,
        ",".join(j.audiences),
        ",".join(j.algorithms),
        ",".join(i.key_ids),
        j.subject_claim,
        j.tier_claim or "-",
        scopes_column(j.scopes),
    )


def _mtls_row(m: admin_pb2.MtlsMappingInfo) -> tuple[str, ...]:
    return (
        m.id,
        m.tenant_id,
        m.mapping.uri,
        "prefix" if m.mapping.prefix else "exact",
        scopes_column(m.mapping.scopes),
    )


async def identity_jwt_add(stub: Stub, ns: argparse.Namespace) -> Output:
    try:
        jwks = await asyncio.to_thread(Path(ns.jwks).read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"--jwks {ns.jwks}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    issuer = snapshot_pb2.JwtIssuer(
        issuer=ns.issuer,
        audiences=ns.audience or [],
        algorithms=ns.algorithm or [],
        jwks_json=jwks,
        leeway_seconds=ns.leeway,
        subject_claim=ns.subject_claim,
        tier_claim=ns.tier_claim or "",
        metadata_claims=_pairs(ns.metadata_claim, "--metadata-claim"),
        scopes=ns.scope or [],
    )
    r = await stub.AddJwtIssuer(admin_pb2.AddJwtIssuerRequest(tenant=ns.tenant, issuer=issuer))
    return Output(r, JWT_COLUMNS, [_jwt_row(r)])


async def identity_jwt_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListJwtIssuers(admin_pb2.ListJwtIssuersRequest(tenant=ns.tenant or ""))
    return Output(r, JWT_COLUMNS, [_jwt_row(i) for i in r.issuers])


async def identity_jwt_remove(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.RemoveJwtIssuer(admin_pb2.RemoveJwtIssuerRequest(id=ns.id)))


async def identity_mtls_add(stub: Stub, ns: argparse.Namespace) -> Output:
    mapping = snapshot_pb2.MtlsMapping(uri=ns.uri, prefix=ns.prefix, scopes=ns.scope or [])
    r = await stub.AddMtlsMapping(admin_pb2.AddMtlsMappingRequest(tenant=ns.tenant, mapping=mapping))
    return Output(r, MTLS_COLUMNS, [_mtls_row(r)])


async def identity_mtls_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListMtlsMappings(admin_pb2.ListMtlsMappingsRequest(tenant=ns.tenant or ""))
    return Output(r, MTLS_COLUMNS, [_mtls_row(m) for m in r.mappings])


async def identity_mtls_remove(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.RemoveMtlsMapping(admin_pb2.RemoveMtlsMappingRequest(id=ns.id)))
