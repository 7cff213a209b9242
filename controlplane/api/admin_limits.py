"""The rate-limit and budget handlers of AdminService; mixed into
``controlplane.api.admin.AdminServicer``."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.interceptor import current_caller
from controlplane.services.limits import LimitsChange, LimitsService, LimitsView
from signalbox.api.admin.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def _info(view: LimitsView) -> admin_pb2.LimitsInfo:
    return admin_pb2.LimitsInfo(
        tenant=view.tenant.name,
        tenant_id=str(view.tenant.id),
        key_id=str(view.key.id) if view.key is not None else "",
        limits=view.limits,
        spent_day_nanos=view.spent_day_nanos,
        spent_month_nanos=view.spent_month_nanos,
        snapshot_version=view.snapshot_version,
    )


class LimitsAdmin:
    """The limits RPCs; the servicer's ``__init__`` sets ``_limits``."""

    _limits: LimitsService

    async def SetLimits(self, request: admin_pb2.SetLimitsRequest, context: Context) -> admin_pb2.LimitsInfo:
        change = LimitsChange(
            **{
                name: getattr(request, name) if request.HasField(name) else None
                for name in (
                    "requests_per_minute",
                    "tokens_per_minute",
                    "budget_day_nanos",
                    "budget_month_nanos",
                    "on_unreachable",
                )
            }
        )
        return _info(await self._limits.set(current_caller(), request.tenant, request.key_id, change))

    async def GetLimits(self, request: admin_pb2.GetLimitsRequest, context: Context) -> admin_pb2.LimitsInfo:
        return _info(await self._limits.get(request.tenant, request.key_id))

    async def ClearLimits(
        self, request: admin_pb2.ClearLimitsRequest, context: Context
    ) -> admin_pb2.LimitsInfo:
        return _info(await self._limits.clear(current_caller(), request.tenant, request.key_id))
