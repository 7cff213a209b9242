"""Stored snapshots, and the channel that announces new ones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Node, Snapshot

NOTIFY_CHANNEL = "signalbox_snapshots"
"""Postgres channel a replica LISTENs on; the payload is the new version number."""


async def latest(session: AsyncSession) -> Snapshot | None:
    return await session.scalar(select(Snapshot).order_by(Snapshot.version.desc()).limit(1))


async def head(session: AsyncSession) -> tuple[int, bytes] | None:
    """(version, payload hash) of the newest snapshot, without loading its envelope."""
    row = (
        await session.execute(
            select(Snapshot.version, Snapshot.sha256).order_by(Snapshot.version.desc()).limit(1)
        )
    ).first()
    return None if row is None else (int(row[0]), bytes(row[1]))


async def get(session: AsyncSession, version: int) -> Snapshot | None:
    return await session.get(Snapshot, version)


async def page(session: AsyncSession, *, limit: int, before: int = 0) -> Sequence[Snapshot]:
    """Up to ``limit`` stored versions, newest first; only those below ``before`` when it is set."""
    query = select(Snapshot).order_by(Snapshot.version.desc()).limit(limit)
    if before:
        query = query.where(Snapshot.version < before)
    return (await session.scalars(query)).all()


async def mark_exported(session: AsyncSession, version: int, at: datetime) -> None:
    """Record that ``version`` left as a pin (the first export's time is kept)."""
    await session.execute(
        update(Snapshot)
        .where(Snapshot.version == version, Snapshot.exported_at.is_(None))
        .values(exported_at=at)
    )


async def prune(session: AsyncSession, *, newest: int, keep_last: int) -> list[int]:
    """Delete versions older than the last ``keep_last`` (up to ``newest``), except those a
    node still runs and exported pins. Returns the deleted versions."""
    assert keep_last >= 1, "the newest version is always kept"
    running = select(Node.applied_version).where(Node.applied_version > 0)
    result = await session.execute(
        delete(Snapshot)
        .where(
            Snapshot.version <= newest - keep_last,
            Snapshot.exported_at.is_(None),
            Snapshot.version.not_in(running),
        )
        .returning(Snapshot.version)
        .execution_options(synchronize_session=False)
    )
    return sorted(v for (v,) in result)


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
