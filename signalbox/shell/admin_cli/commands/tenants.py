"""``signalbox admin tenant|key|import|identity``: who may call. Tenants, their API keys
(and bulk import of both), and the callers they trust: JWT issuers and mTLS mappings."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dataplane.scopes import ScopeSyntaxError, validate_scopes
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.shell.admin_cli.commands.base import Stub, pairs, read_input, read_text_input
from signalbox.shell.admin_cli.output import (
    EVIDENCE_CONTENT_FLAG,
    KEY_COLUMNS,
    SPOOL_FULL_FLAG,
    TENANT_COLUMNS,
    Output,
    deleted,
    key_row,
    scopes_column,
    tenant_row,
)

# ---- tenants ----

MAX_IMPORT_BYTES = 48 * 1024 * 1024
"""Largest import file read (the control plane refuses a larger one)."""
MAX_JWKS_BYTES = 64 * 1024
"""Largest JWKS document read (nodes refuse a larger one)."""


async def tenant_create(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.CreateTenantRequest(
        name=ns.name, tier=ns.tier or "", labels=pairs(ns.label, "--label")
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
        tenant=ns.name, labels=pairs(ns.label, "--label"), replace_labels=ns.replace_labels
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
    data = await asyncio.to_thread(read_input, ns.file, "FILE", MAX_IMPORT_BYTES)
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
    jwks = await asyncio.to_thread(read_text_input, ns.jwks, "--jwks", MAX_JWKS_BYTES)
    issuer = snapshot_pb2.JwtIssuer(
        issuer=ns.issuer,
        audiences=ns.audience or [],
        algorithms=ns.algorithm or [],
        jwks_json=jwks,
        leeway_seconds=ns.leeway,
        subject_claim=ns.subject_claim,
        tier_claim=ns.tier_claim or "",
        metadata_claims=pairs(ns.metadata_claim, "--metadata-claim"),
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
