"""The governance-profile handlers of AdminService; mixed into
``controlplane.api.admin.AdminServicer``."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.convert import ts
from controlplane.api.interceptor import current_caller
from controlplane.db.models import GovernanceProfile
from controlplane.services.governance import GovernanceService, TestResult
from signalbox.api.admin.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def profile(row: GovernanceProfile, snapshot_version: int = 0) -> admin_pb2.GovernanceProfile:
    return admin_pb2.GovernanceProfile(
        id=str(row.id),
        tenant_id=str(row.tenant_id) if row.tenant_id is not None else "",
        version=row.version,
        document_json="" if row.deleted else row.document_json,
        created_at=ts(row.created_at),
        created_by=row.created_by,
        deleted=row.deleted,
        snapshot_version=snapshot_version,
    )


def tested(result: TestResult) -> admin_pb2.TestGovernanceProfileResponse:
    row = result.profile
    return admin_pb2.TestGovernanceProfileResponse(
        profile_tenant_id=str(row.tenant_id) if row is not None and row.tenant_id is not None else "",
        profile_version=row.version if row is not None else 0,
        stage=result.stage.value,
        results=[
            admin_pb2.GovernanceRuleResult(
                rule=r.rule,
                detector=r.detector,
                action=r.action,
                count=r.count,
                spans=[admin_pb2.GovernanceSpan(start=p.start, end=p.end, kind=p.kind) for p in r.positions],
                effect=r.effect,
            )
            for r in result.results
        ],
        result_text=result.text,
        blocked_by=result.blocked_by,
        data_class=result.data_class.name.lower() if result.data_class else "",
    )


class GovernanceAdmin:
    """The governance-profile RPCs; the servicer's ``__init__`` sets ``_governance``."""

    _governance: GovernanceService

    async def ApplyGovernanceProfile(
        self, request: admin_pb2.ApplyGovernanceProfileRequest, context: Context
    ) -> admin_pb2.GovernanceProfile:
        row, version = await self._governance.apply(
            current_caller(), tenant=request.tenant, document=request.document
        )
        return profile(row, version)

    async def GetGovernanceProfile(
        self, request: admin_pb2.GetGovernanceProfileRequest, context: Context
    ) -> admin_pb2.GovernanceProfile:
        return profile(await self._governance.get(request.tenant, request.version))

    async def ListGovernanceProfileHistory(
        self, request: admin_pb2.ListGovernanceProfileHistoryRequest, context: Context
    ) -> admin_pb2.ListGovernanceProfileHistoryResponse:
        rows = await self._governance.history(request.tenant)
        return admin_pb2.ListGovernanceProfileHistoryResponse(versions=[profile(r) for r in rows])

    async def DiffGovernanceProfile(
        self, request: admin_pb2.DiffGovernanceProfileRequest, context: Context
    ) -> admin_pb2.DiffGovernanceProfileResponse:
        older, newer, diff = await self._governance.diff(
            request.tenant, request.from_version, request.to_version, request.format
        )
        return admin_pb2.DiffGovernanceProfileResponse(from_version=older, to_version=newer, diff=diff)

    async def TestGovernanceProfile(
        self, request: admin_pb2.TestGovernanceProfileRequest, context: Context
    ) -> admin_pb2.TestGovernanceProfileResponse:
        return tested(await self._governance.test(request.tenant, request.text, request.stage))

    async def DeleteGovernanceProfile(
        self, request: admin_pb2.DeleteGovernanceProfileRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        version = await self._governance.delete(current_caller(), request.tenant)
        return admin_pb2.DeleteResponse(snapshot_version=version)
