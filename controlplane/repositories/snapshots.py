"""Stored snapshots, and the channel that announces new ones."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Snapshot

NOTIFY_CHANNEL = "signalbox_snapshots"
"""Postgres channel a replica LISTENs on; the payload is the new version number."""


async def latest(session: AsyncSession) -> Snapshot | None:
    return await session.scalar(select(Snapshot).order_by(Snapshot.version.desc()).limit(1))


async def get(session: AsyncSession, version: int) -> Snapshot | None:
    return await session.get(Snapshot, version)


async def add(session: AsyncSession, row: Snapshot) -> None:
    """Store a new snapshot (flushed, so a duplicate version fails here)."""
    session.add(row)
    await session.flush()


async def announce(session: AsyncSession, version: int) -> None:
    """NOTIFY every listening replica of ``version``; delivered when the transaction commits."""
    await session.execute(text("SELECT pg_notify(:c, :v)"), {"c": NOTIFY_CHANNEL, "v": str(version)})


async def listen(conn: psycopg.AsyncConnection[Any]) -> None:
    """Subscribe ``conn`` (a dedicated autocommit connection, not a session) to ``announce``."""
    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
