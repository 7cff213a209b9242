"""Tenants' caller identities (JWT issuers, mTLS mappings): rows, and their snapshot records."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Tenant, TenantIdentity
from dataplane.snapshot.layout import IDENTITIES, record
from signalbox.api.config.v1 import snapshot_pb2

JWT = "jwt"
MTLS = "mtls"


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """One identity as a snapshot record, with what a group's tenant selection matches on."""

    tenant_id: str
    tenant_name: str
    record: bytes


def snapshot_entry(row: TenantIdentity) -> snapshot_pb2.TenantIdentity:
    entry = snapshot_pb2.TenantIdentity(id=str(row.id), tenant_id=str(row.tenant_id))
    if row.kind == JWT:
        entry.jwt.ParseFromString(row.spec)
    else:
        entry.mtls.ParseFromString(row.spec)
    return entry


async def records(session: AsyncSession) -> list[IdentityRecord]:
    """Every identity, oldest first, encoded as records of ``Snapshot.identities``."""
    rows = (
        await session.execute(
            select(TenantIdentity, Tenant.name)
            .join(Tenant, Tenant.id == TenantIdentity.tenant_id)
            .order_by(TenantIdentity.created_at, TenantIdentity.id)
        )
    ).all()
    return [
        IdentityRecord(
            str(row.tenant_id),
            name,
            record(IDENTITIES, snapshot_entry(row).SerializeToString(deterministic=True)),
        )
        for row, name in rows
    ]


def for_group(identities: Sequence[IdentityRecord], tenants: frozenset[str] | None) -> list[bytes]:
    """The records a group sees: those of the tenants it sees (``None``: every tenant)."""
    return [
        i.record for i in identities if tenants is None or i.tenant_id in tenants or i.tenant_name in tenants
    ]


async def list_for(session: AsyncSession, kind: str, tenant_id: uuid.UUID | None) -> Sequence[TenantIdentity]:
    query = (
        select(TenantIdentity)
        .where(TenantIdentity.kind == kind)
        .order_by(TenantIdentity.created_at, TenantIdentity.id)
    )
    if tenant_id is not None:
        query = query.where(TenantIdentity.tenant_id == tenant_id)
    return (await session.scalars(query)).all()


async def find(session: AsyncSession, kind: str, match: str, prefix: bool) -> TenantIdentity | None:
    return await session.scalar(
        select(TenantIdentity).where(
            TenantIdentity.kind == kind, TenantIdentity.match == match, TenantIdentity.prefix == prefix
        )
    )


async def get(session: AsyncSession, kind: str, ref: str) -> TenantIdentity | None:
    try:
        ident = uuid.UUID(ref)
    except ValueError:
        return None
    row = await session.get(TenantIdentity, ident)
    return row if row is not None and row.kind == kind else None
