"""``signalbox admin admins|audit``: who may administer. Admin tokens, admin identities by
client certificate, and the append-only audit trail of every admin call."""

from __future__ import annotations

import argparse
import sys

from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.admin_cli.commands.base import Stub
from signalbox.shell.admin_cli.output import (
    ADMIN_AUDIT_COLUMNS,
    ADMIN_MTLS_COLUMNS,
    ADMIN_TOKEN_COLUMNS,
    Output,
    admin_audit_row,
    admin_mtls_row,
    admin_token_row,
)

# ---- tokens ----


async def admin_token_create(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name=ns.name, role=ns.role, tenant=ns.tenant or "")
    )
    # The token is the last column, so scripts can take it with `tail -1 | awk '{print $NF}'`.
    return Output(
        r,
        ("id", "name", "role", "tenant", "token (shown once)"),
        [(r.info.id, r.info.name, r.info.role, r.info.tenant_id, r.token)],
    )


async def admin_token_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListAdminTokens(admin_pb2.ListAdminTokensRequest(tenant=ns.tenant or ""))
    return Output(r, ADMIN_TOKEN_COLUMNS, [admin_token_row(t) for t in r.tokens])


async def admin_token_revoke(stub: Stub, ns: argparse.Namespace) -> Output:
    t = await stub.RevokeAdminToken(admin_pb2.RevokeAdminTokenRequest(id=ns.id))
    return Output(t, ADMIN_TOKEN_COLUMNS, [admin_token_row(t)])


# ---- identities by client certificate ----


async def admin_mtls_add(stub: Stub, ns: argparse.Namespace) -> Output:
    m = await stub.AddAdminMtlsIdentity(
        admin_pb2.AddAdminMtlsIdentityRequest(uri=ns.uri, name=ns.name, role=ns.role, tenant=ns.tenant or "")
    )
    return Output(m, ADMIN_MTLS_COLUMNS, [admin_mtls_row(m)])


async def admin_mtls_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListAdminMtlsIdentities(admin_pb2.ListAdminMtlsIdentitiesRequest())
    return Output(r, ADMIN_MTLS_COLUMNS, [admin_mtls_row(m) for m in r.identities])


async def admin_mtls_remove(stub: Stub, ns: argparse.Namespace) -> Output:
    m = await stub.RemoveAdminMtlsIdentity(admin_pb2.RemoveAdminMtlsIdentityRequest(id=ns.id))
    return Output(m, ADMIN_MTLS_COLUMNS, [admin_mtls_row(m)])


# ---- the audit trail ----


async def audit_list(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.ListAdminAuditRequest(
        actor=ns.actor or "", tenant=ns.tenant or "", action=ns.action or "", limit=ns.limit or 0
    )
    if ns.since is not None:
        request.since.FromDatetime(ns.since)
    if ns.until is not None:
        request.until.FromDatetime(ns.until)
    r = await stub.ListAdminAudit(request)
    if r.truncated:
        print(
            f"(more rows match: raise --limit above {len(r.entries)} or narrow the filters)",
            file=sys.stderr,
        )
    return Output(r, ADMIN_AUDIT_COLUMNS, [admin_audit_row(e) for e in r.entries])
