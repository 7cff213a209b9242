"""The evidence handlers of AdminService: query, chains, prune, export and import of the
evidence store; mixed into ``controlplane.api.admin.AdminServicer``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from controlplane.api import convert
from controlplane.api.interceptor import current_caller
from controlplane.api.status import bounded
from controlplane.errors import InvalidArgument
from controlplane.evidence.export import EvidenceExporter
from controlplane.evidence.imports import MAX_IMPORT_BYTES, EvidenceImporter
from controlplane.evidence.queries import EvidenceFilter, EvidenceQueries
from controlplane.evidence.retention import EvidenceRetention
from controlplane.evidence.usage import UsageFilter, UsageRow
from controlplane.services.admin import AdminService
from signalbox.api.admin.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class EvidenceAdmin:
    """The evidence RPCs; the servicer's ``__init__`` sets the services below."""

    _evidence: EvidenceQueries
    _exporter: EvidenceExporter
    _retention: EvidenceRetention
    _importer: EvidenceImporter
    _admin: AdminService

    async def _tenant_id(self, ref: str) -> str:
        """The id of the tenant ``ref`` names by id or name: records carry their tenant's id,
        so ``--tenant acme`` must not be a filter nothing matches (a query, a report or a
        signed pack answering "none" for a tenant that has records). A ``ref`` naming no
        tenant is kept as it is: a deleted tenant's records keep its id."""
        return (await self._admin.tenant_id(ref) or ref) if ref else ""

    # ---- evidence store ----

    async def QueryEvidence(
        self, request: admin_pb2.QueryEvidenceRequest, context: Context
    ) -> admin_pb2.QueryEvidenceResponse:
        tenant_id = await self._tenant_id(request.tenant_id)
        rows, truncated = await self._evidence.records(
            _evidence_filter(request, tenant_id, limit=request.limit)
        )
        # Pruned records are all older than their statement's pruned_before.
        since = request.since.ToDatetime(UTC) if request.HasField("since") else None
        pruned = [
            convert.evidence_pruned_range(p)
            for p in (await self._retention.pruned()).values()
            if since is None or since < p.pruned_before
        ]
        return admin_pb2.QueryEvidenceResponse(
            records=[convert.evidence_record(r) for r in rows], truncated=truncated, pruned=pruned
        )

    async def GetUsage(
        self, request: admin_pb2.GetUsageRequest, context: Context
    ) -> admin_pb2.GetUsageResponse:
        since = request.since.ToDatetime(UTC) if request.HasField("since") else None
        report = await self._evidence.usage.report(
            UsageFilter(
                tenant_id=await self._tenant_id(request.tenant_id),
                api_key_id=request.api_key_id,
                model=request.model,
                since=since,
                until=request.until.ToDatetime(UTC) if request.HasField("until") else None,
                by=list(request.by),
            )
        )
        response = admin_pb2.GetUsageResponse(
            rows=[_usage_row(r) for r in report.rows],
            total=_usage_row(report.total),
            truncated=report.truncated,
        )
        pruned = [
            p.pruned_before
            for p in (await self._retention.pruned()).values()
            if since is None or since < p.pruned_before
        ]
        if pruned:
            response.pruned_before.FromDatetime(max(pruned))
        return response

    async def ListEvidenceChains(
        self, request: admin_pb2.ListEvidenceChainsRequest, context: Context
    ) -> admin_pb2.ListEvidenceChainsResponse:
        pruned = await self._retention.pruned()
        chains = []
        for c in await self._evidence.chains():
            status = convert.evidence_chain(c.chain, c.alarms, c.stale)
            statement = pruned.get(c.chain.chain_id)
            status.pruned_through_seq = statement.last_seq if statement is not None else 0
            status.proven_through_seq = c.proven
            chains.append(status)
        return admin_pb2.ListEvidenceChainsResponse(chains=chains)

    async def PruneEvidence(
        self, request: admin_pb2.PruneEvidenceRequest, context: Context
    ) -> admin_pb2.PruneEvidenceResponse:
        if not request.HasField("before"):
            raise InvalidArgument("before", "is required")
        result = await self._retention.prune_until(request.before.ToDatetime(UTC), datetime.now(UTC))
        return admin_pb2.PruneEvidenceResponse(
            partitions=result.partitions,
            ranges=[convert.evidence_pruned_range(s) for s in result.statements],
        )

    # ---- evidence packs ----

    async def ExportEvidence(
        self, request: admin_pb2.ExportEvidenceRequest, context: Context
    ) -> AsyncIterator[admin_pb2.EvidencePackChunk]:
        query = _evidence_filter(request, await self._tenant_id(request.tenant_id))
        bound = bool(current_caller().tenant_id)
        async for plan, data in self._exporter.export(query, tenant_bound=bound):
            if plan is not None:
                yield admin_pb2.EvidencePackChunk(records=plan.records, pack_id=plan.pack_id)
            else:
                yield admin_pb2.EvidencePackChunk(data=data)

    # ---- evidence import ----

    async def ImportEvidence(
        self, request_iterator: AsyncIterator[admin_pb2.EvidencePackChunk], context: Context
    ) -> admin_pb2.ImportEvidenceResponse:
        fd, name = tempfile.mkstemp(prefix="signalbox-import-", suffix=".pack")  # 0600
        path = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request_iterator:
                    size += len(chunk.data)
                    if size > MAX_IMPORT_BYTES:
                        raise InvalidArgument("data", f"the pack is larger than {MAX_IMPORT_BYTES} bytes")
                    await asyncio.to_thread(f.write, chunk.data)
            result = await self._importer.import_pack(path)
        finally:
            # Here, not in a worker thread: a second cancel (the server stopping) would cancel
            # an unlink still queued for one and leave the partial pack on disk. One unlink of
            # a local temporary file does not hold the loop up.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return admin_pb2.ImportEvidenceResponse(
            pack_id=result.pack_id,
            node_id=result.node_id,
            chains=[
                admin_pb2.ImportedChain(
                    chain_id=c.chain_id,
                    stored=c.stored,
                    duplicates=c.duplicates,
                    head_seq=c.head_seq,
                    checkpoints=c.checkpoints,
                    error=bounded(c.error),
                    error_seq=c.error_seq,
                )
                for c in result.chains
            ],
        )


def _evidence_filter(
    request: admin_pb2.QueryEvidenceRequest | admin_pb2.ExportEvidenceRequest,
    tenant_id: str,
    *,
    limit: int = 0,
) -> EvidenceFilter:
    return EvidenceFilter(
        correlation_id=request.correlation_id,
        tenant_id=tenant_id,
        api_key_id=request.api_key_id,
        model=request.model,
        outcome=request.outcome,
        since=request.since.ToDatetime(UTC) if request.HasField("since") else None,
        until=request.until.ToDatetime(UTC) if request.HasField("until") else None,
        limit=limit,
    )


INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def _usage_row(r: UsageRow) -> admin_pb2.UsageRow:
    """Sums of hostile records can exceed what the message holds: clamped, never an error."""
    return admin_pb2.UsageRow(
        day=r.day,
        tenant_id=r.tenant_id,
        api_key_id=r.api_key_id,
        model=r.model,
        requests=r.requests,
        errors=r.errors,
        shadow_calls=r.shadow_calls,
        input_tokens=min(r.input_tokens, UINT64_MAX),
        output_tokens=min(r.output_tokens, UINT64_MAX),
        cached_input_tokens=min(r.cached_input_tokens, UINT64_MAX),
        reasoning_output_tokens=min(r.reasoning_output_tokens, UINT64_MAX),
        cost_nanos=max(min(r.cost_nanos, INT64_MAX), -INT64_MAX),
        latency_p50_ms=r.latency_p50_ms,
        latency_p95_ms=r.latency_p95_ms,
        latency_p99_ms=r.latency_p99_ms,
    )
