"""Admin tokens and the audit log."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import AdminToken, AuditEntry


async def token_by_hash(session: AsyncSession, digest: bytes) -> AdminToken | None:
    return await session.scalar(
        select(AdminToken).where(AdminToken.token_sha256 == digest, AdminToken.revoked_at.is_(None))
    )


def add_audit(
    session: AsyncSession, *, actor: str, method: str, target: str, result: str, detail: str
) -> None:
    session.add(AuditEntry(actor=actor, method=method, target=target, result=result, detail=detail))
