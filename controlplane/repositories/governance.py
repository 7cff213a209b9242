"""Governance profiles: versions per tenant (and the platform default), and their snapshot records."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import GovernanceProfile, Tenant
from dataplane.snapshot.layout import GOVERNANCE_PROFILES, record
from signalbox.api.config.v1 import snapshot_pb2


def _of(tenant_id: uuid.UUID | None) -> ColumnElement[bool]:
    return (
        GovernanceProfile.tenant_id.is_(None)
        if tenant_id is None
        else GovernanceProfile.tenant_id == tenant_id
    )


async def history(session: AsyncSession, tenant_id: uuid.UUID | None) -> Sequence[GovernanceProfile]:
    """Every version of one tenant's profile (None: the platform default), oldest first."""
    query = select(GovernanceProfile).where(_of(tenant_id)).order_by(GovernanceProfile.version)
    return (await session.scalars(query)).all()


async def latest(session: AsyncSession, tenant_id: uuid.UUID | None) -> GovernanceProfile | None:
    """The newest version (possibly a deletion marker) of one tenant's profile."""
    query = (
        select(GovernanceProfile).where(_of(tenant_id)).order_by(GovernanceProfile.version.desc()).limit(1)
    )
    return await session.scalar(query)


async def current(session: AsyncSession) -> Sequence[tuple[GovernanceProfile, str]]:
    """The newest non-deleted version per tenant with the tenant's name ("" for the platform
    default), the platform default first, then by tenant id: the snapshot's order."""
    newest = (
        select(GovernanceProfile.tenant_id, func.max(GovernanceProfile.version).label("version"))
        .group_by(GovernanceProfile.tenant_id)
        .subquery()
    )
    query = (
        select(GovernanceProfile, func.coalesce(Tenant.name, ""))
        .join(
            newest,
            (GovernanceProfile.version == newest.c.version)
            & (GovernanceProfile.tenant_id.is_not_distinct_from(newest.c.tenant_id)),
        )
        .outerjoin(Tenant, Tenant.id == GovernanceProfile.tenant_id)
        .where(GovernanceProfile.deleted.is_(False))
        .order_by(GovernanceProfile.tenant_id.nulls_first())
    )
    return [(row, name) for row, name in (await session.execute(query)).all()]


def snapshot_entry(row: GovernanceProfile) -> snapshot_pb2.GovernanceProfile:
    return snapshot_pb2.GovernanceProfile(
        id=str(row.id),
        tenant_id=str(row.tenant_id) if row.tenant_id is not None else "",
        version=row.version,
        document_json=row.document_json,
    )


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """One profile as a record of ``Snapshot.governance_profiles``, with what a group's tenant
    selection matches on (both empty for the platform default)."""

    tenant_id: str
    tenant_name: str
    record: bytes


async def records(session: AsyncSession) -> list[ProfileRecord]:
    """Every current profile, in snapshot order, encoded as records."""
    return [
        ProfileRecord(
            str(row.tenant_id) if row.tenant_id is not None else "",
            name,
            record(GOVERNANCE_PROFILES, snapshot_entry(row).SerializeToString(deterministic=True)),
        )
        for row, name in await current(session)
    ]


def for_group(profiles: Sequence[ProfileRecord], tenants: frozenset[str] | None) -> list[bytes]:
    """The records a group sees: the platform default, and the profiles of the tenants it
    sees (``None``: every tenant)."""
    return [
        p.record
        for p in profiles
        if not p.tenant_id or tenants is None or p.tenant_id in tenants or p.tenant_name in tenants
    ]
