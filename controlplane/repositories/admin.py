"""Admin tokens, admin mTLS identities and the audit log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import AdminMtlsIdentity, AdminToken, AuditEntry, Tenant


def as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def token_by_hash(session: AsyncSession, digest: bytes) -> AdminToken | None:
    return await session.scalar(
        select(AdminToken).where(AdminToken.token_sha256 == digest, AdminToken.revoked_at.is_(None))
    )


async def token(session: AsyncSession, ref: str) -> AdminToken | None:
    ident = as_uuid(ref)
    return None if ident is None else await session.get(AdminToken, ident)


async def tokens(session: AsyncSession, tenant_id: uuid.UUID | None) -> Sequence[AdminToken]:
    query = select(AdminToken).order_by(AdminToken.created_at, AdminToken.id)
    if tenant_id is not None:
        query = query.where(AdminToken.tenant_id == tenant_id)
    return (await session.scalars(query)).all()


async def mtls_identity_by_uri(session: AsyncSession, uri: str) -> AdminMtlsIdentity | None:
    return await session.scalar(select(AdminMtlsIdentity).where(AdminMtlsIdentity.uri == uri))


async def mtls_identity(session: AsyncSession, ref: str) -> AdminMtlsIdentity | None:
    ident = as_uuid(ref)
    return None if ident is None else await session.get(AdminMtlsIdentity, ident)


async def mtls_identities(session: AsyncSession) -> Sequence[AdminMtlsIdentity]:
    query = select(AdminMtlsIdentity).order_by(AdminMtlsIdentity.uri)
    return (await session.scalars(query)).all()


async def tenant_state(session: AsyncSession, tenant_id: uuid.UUID | None) -> tuple[str, bool]:
    """The tenant's name and whether it is active; ("", True) for no tenant."""
    if tenant_id is None:
        return "", True
    row = (await session.execute(select(Tenant.name, Tenant.active).where(Tenant.id == tenant_id))).first()
    return (row.name, bool(row.active)) if row is not None else ("", True)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit row to write (``AuditEntry``'s columns but ``id`` and ``at``)."""

    actor: str
    method: str
    target: str
    result: str
    detail: str = ""
    actor_role: str = ""
    actor_tenant: str = ""
    tenant: str = ""
    before_sha256: str = ""
    after_sha256: str = ""


def add_audit(session: AsyncSession, row: AuditRow) -> None:
    session.add(
        AuditEntry(
            actor=row.actor,
            method=row.method,
            target=row.target,
            result=row.result,
            detail=row.detail,
            actor_role=row.actor_role,
            actor_tenant=row.actor_tenant,
            tenant=row.tenant,
            before_sha256=row.before_sha256,
            after_sha256=row.after_sha256,
        )
    )


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str = ""
    tenant: str = ""
    """A tenant id: rows about it or made by one of its identities."""
    action: str = ""
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


async def audit_rows(session: AsyncSession, f: AuditFilter) -> tuple[Sequence[AuditEntry], bool]:
    """Matching rows newest first, and whether more matched than ``f.limit``."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(f.limit + 1)
    if f.actor:
        query = query.where(AuditEntry.actor == f.actor)
    if f.tenant:
        query = query.where(or_(AuditEntry.tenant == f.tenant, AuditEntry.actor_tenant == f.tenant))
    if f.action:
        query = query.where(AuditEntry.method == f.action)
    if f.since is not None:
        query = query.where(AuditEntry.at >= f.since)
    if f.until is not None:
        query = query.where(AuditEntry.at < f.until)
    rows = (await session.scalars(query)).all()
    return rows[: f.limit], len(rows) > f.limit
