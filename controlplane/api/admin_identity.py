"""The caller-identity handlers of AdminService: JWT issuers and mTLS mappings, added,
listed and removed; mixed into ``controlplane.api.admin.AdminServicer``.

Both kinds are rows of one table told apart by ``kind``, so their handlers share one shape
(``_Kind``): add and convert the row with the snapshot version of the change, list
converted rows, remove by id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from controlplane.api import convert
from controlplane.api.interceptor import current_caller
from controlplane.db.models import TenantIdentity
from controlplane.services.callers import JWT, MTLS, CallerIdentityService
from signalbox.api.admin.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]
Info = TypeVar("Info", admin_pb2.JwtIssuerInfo, admin_pb2.MtlsMappingInfo)


@dataclass(frozen=True, slots=True)
class _Kind(Generic[Info]):
    kind: str
    """``JWT`` or ``MTLS``: the rows' ``kind``."""
    info: Callable[[TenantIdentity, int], Info]
    """The row as the Admin API shows it, with the snapshot version of its change (0: none)."""

    def added(self, change: tuple[TenantIdentity, int]) -> Info:
        row, version = change
        return self.info(row, version)

    async def list(self, callers: CallerIdentityService, tenant: str) -> list[Info]:
        return [self.info(row, 0) for row in await callers.list(self.kind, tenant)]

    async def remove(self, callers: CallerIdentityService, ref: str) -> admin_pb2.DeleteResponse:
        convert.require("id", ref)
        return admin_pb2.DeleteResponse(
            snapshot_version=await callers.remove(current_caller(), self.kind, ref)
        )


_JWT = _Kind(JWT, convert.jwt_issuer)
_MTLS = _Kind(MTLS, convert.mtls_mapping)


class CallerIdentityAdmin:
    """The caller-identity RPCs; the servicer's ``__init__`` sets ``_callers``."""

    _callers: CallerIdentityService

    async def AddJwtIssuer(
        self, request: admin_pb2.AddJwtIssuerRequest, context: Context
    ) -> admin_pb2.JwtIssuerInfo:
        return _JWT.added(
            await self._callers.add_jwt(current_caller(), tenant=request.tenant, issuer=request.issuer)
        )

    async def ListJwtIssuers(
        self, request: admin_pb2.ListJwtIssuersRequest, context: Context
    ) -> admin_pb2.ListJwtIssuersResponse:
        return admin_pb2.ListJwtIssuersResponse(issuers=await _JWT.list(self._callers, request.tenant))

    async def RemoveJwtIssuer(
        self, request: admin_pb2.RemoveJwtIssuerRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        return await _JWT.remove(self._callers, request.id)

    async def AddMtlsMapping(
        self, request: admin_pb2.AddMtlsMappingRequest, context: Context
    ) -> admin_pb2.MtlsMappingInfo:
        return _MTLS.added(
            await self._callers.add_mtls(current_caller(), tenant=request.tenant, mapping=request.mapping)
        )

    async def ListMtlsMappings(
        self, request: admin_pb2.ListMtlsMappingsRequest, context: Context
    ) -> admin_pb2.ListMtlsMappingsResponse:
        return admin_pb2.ListMtlsMappingsResponse(mappings=await _MTLS.list(self._callers, request.tenant))

    async def RemoveMtlsMapping(
        self, request: admin_pb2.RemoveMtlsMappingRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        return await _MTLS.remove(self._callers, request.id)
