"""The admin-security handlers of AdminService: admin tokens, admin identities by client
certificate, and the audit trail; mixed into ``controlplane.api.admin.AdminServicer``.

Who may call them, on which tenant, is decided before they run (``api/authz.py``); what a
tenant admin may hand out is checked by ``AdminService.create_token`` (it gets the caller)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import grpc

from controlplane.api import convert
from controlplane.api.interceptor import current_caller
from controlplane.db.models import AdminMtlsIdentity, AdminToken, AuditEntry
from controlplane.repositories.admin import AuditFilter
from controlplane.services.admin import AdminService
from signalbox.api.admin.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def token_info(row: AdminToken) -> admin_pb2.AdminTokenInfo:
    """A token's metadata: never the token, never its hash."""
    return admin_pb2.AdminTokenInfo(
        id=str(row.id),
        name=row.name,
        role=row.role,
        tenant_id=str(row.tenant_id) if row.tenant_id is not None else "",
        prefix=row.prefix,
        created_at=convert.ts(row.created_at),
        revoked_at=convert.ts(row.revoked_at),
        created_by=row.created_by,
    )


def mtls_identity(row: AdminMtlsIdentity) -> admin_pb2.AdminMtlsIdentity:
    return admin_pb2.AdminMtlsIdentity(
        id=str(row.id),
        uri=row.uri,
        name=row.name,
        role=row.role,
        tenant_id=str(row.tenant_id) if row.tenant_id is not None else "",
        created_at=convert.ts(row.created_at),
    )


def audit_entry(row: AuditEntry) -> admin_pb2.AdminAuditEntry:
    return admin_pb2.AdminAuditEntry(
        id=row.id,
        at=convert.ts(row.at),
        actor=row.actor,
        actor_role=row.actor_role,
        actor_tenant=row.actor_tenant,
        action=row.method,
        target=row.target,
        tenant=row.tenant,
        result=row.result,
        detail=row.detail,
        before_sha256=row.before_sha256,
        after_sha256=row.after_sha256,
    )


class AdminSecurityAdmin:
    """The admin-security RPCs; the servicer's ``__init__`` sets ``_admin``."""

    _admin: AdminService

    async def CreateAdminToken(
        self, request: admin_pb2.CreateAdminTokenRequest, context: Context
    ) -> admin_pb2.CreateAdminTokenResponse:
        row, token = await self._admin.create_token(
            request.name, request.role, request.tenant, creator=current_caller()
        )
        return admin_pb2.CreateAdminTokenResponse(info=token_info(row), token=token)

    async def ListAdminTokens(
        self, request: admin_pb2.ListAdminTokensRequest, context: Context
    ) -> admin_pb2.ListAdminTokensResponse:
        rows = await self._admin.list_tokens(request.tenant)
        return admin_pb2.ListAdminTokensResponse(tokens=[token_info(r) for r in rows])

    async def RevokeAdminToken(
        self, request: admin_pb2.RevokeAdminTokenRequest, context: Context
    ) -> admin_pb2.AdminTokenInfo:
        convert.require("id", request.id)
        return token_info(await self._admin.revoke_token(request.id))

    async def AddAdminMtlsIdentity(
        self, request: admin_pb2.AddAdminMtlsIdentityRequest, context: Context
    ) -> admin_pb2.AdminMtlsIdentity:
        row = await self._admin.add_mtls_identity(
            uri=request.uri, name=request.name, role=request.role, tenant=request.tenant
        )
        return mtls_identity(row)

    async def ListAdminMtlsIdentities(
        self, request: admin_pb2.ListAdminMtlsIdentitiesRequest, context: Context
    ) -> admin_pb2.ListAdminMtlsIdentitiesResponse:
        rows = await self._admin.list_mtls_identities()
        return admin_pb2.ListAdminMtlsIdentitiesResponse(identities=[mtls_identity(r) for r in rows])

    async def RemoveAdminMtlsIdentity(
        self, request: admin_pb2.RemoveAdminMtlsIdentityRequest, context: Context
    ) -> admin_pb2.AdminMtlsIdentity:
        convert.require("id", request.id)
        return mtls_identity(await self._admin.remove_mtls_identity(request.id))

    async def ListAdminAudit(
        self, request: admin_pb2.ListAdminAuditRequest, context: Context
    ) -> admin_pb2.ListAdminAuditResponse:
        rows, truncated = await self._admin.audit_rows(
            AuditFilter(
                actor=request.actor,
                tenant=request.tenant,
                action=request.action,
                since=request.since.ToDatetime(UTC) if request.HasField("since") else None,
                until=request.until.ToDatetime(UTC) if request.HasField("until") else None,
                limit=request.limit,
            )
        )
        return admin_pb2.ListAdminAuditResponse(entries=[audit_entry(r) for r in rows], truncated=truncated)
