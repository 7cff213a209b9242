"""Stored snapshots."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Snapshot


async def latest(session: AsyncSession) -> Snapshot | None:
    return await session.scalar(select(Snapshot).order_by(Snapshot.version.desc()).limit(1))


async def get(session: AsyncSession, version: int) -> Snapshot | None:
    return await session.get(Snapshot, version)
