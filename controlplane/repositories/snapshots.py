"""Stored snapshots (one version chain per node group), and the channel that announces new ones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Node, Snapshot
from controlplane.limits import DEFAULT_GROUP

NOTIFY_CHANNEL = "signalbox_snapshots"
"""Postgres channel a replica LISTENs on; the payload is "<group>:<version>"."""


async def latest(session: AsyncSession, group: str = DEFAULT_GROUP) -> Snapshot | None:
    query = select(Snapshot).where(Snapshot.node_group == group).order_by(Snapshot.version.desc()).limit(1)
    return await session.scalar(query)


class Head(NamedTuple):
    """A group's newest stored snapshot, without its envelope (megabytes at fleet size)."""

    version: int
    sha256: bytes
    created_at: datetime

    @property
    def key(self) -> tuple[int, bytes]:
        """(version, payload hash): what identifies the stored snapshot exactly."""
        return self.version, self.sha256


async def head(session: AsyncSession, group: str) -> Head | None:
    """``group``'s newest snapshot, its envelope not loaded; None if it has none."""
    row = (
        await session.execute(
            select(Snapshot.version, Snapshot.sha256, Snapshot.created_at)
            .where(Snapshot.node_group == group)
            .order_by(Snapshot.version.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else Head(int(row[0]), bytes(row[1]), row[2])


async def heads(session: AsyncSession) -> dict[str, Head]:
    """Every group's newest snapshot (groups without one are absent), envelopes not loaded."""
    newest = (
        select(Snapshot.node_group, func.max(Snapshot.version).label("version"))
        .group_by(Snapshot.node_group)
        .subquery()
    )
    rows = await session.execute(
        select(Snapshot.node_group, Snapshot.version, Snapshot.sha256, Snapshot.created_at).join(
            newest, (Snapshot.node_group == newest.c.node_group) & (Snapshot.version == newest.c.version)
        )
    )
    return {
        group: Head(int(version), bytes(sha256), created_at) for group, version, sha256, created_at in rows
    }


async def newest_versions(session: AsyncSession) -> dict[str, int]:
    """Every group's newest stored version (groups without a snapshot are absent)."""
    query = select(Snapshot.node_group, func.max(Snapshot.version)).group_by(Snapshot.node_group)
    return {group: int(version) for group, version in (await session.execute(query)).all()}


async def deltas(session: AsyncSession, group: str, after: int, upto: int) -> list[tuple[int, bytes | None]]:
    """(version, stored delta) of ``group``'s versions in (``after``, ``upto``], oldest first."""
    rows = await session.execute(
        select(Snapshot.version, Snapshot.delta)
        .where(Snapshot.node_group == group, Snapshot.version > after, Snapshot.version <= upto)
        .order_by(Snapshot.version)
    )
    return [(int(v), bytes(d) if d is not None else None) for v, d in rows]


async def get(session: AsyncSession, version: int, group: str = DEFAULT_GROUP) -> Snapshot | None:
    return await session.get(Snapshot, (group, version))


async def published(session: AsyncSession, group: str, version: int, sha256: bytes) -> bool:
    """Whether ``group``'s snapshot ``version`` is stored with payload hash ``sha256``."""
    found = await session.execute(
        select(Snapshot.version)
        .where(Snapshot.node_group == group, Snapshot.version == version, Snapshot.sha256 == sha256)
        .limit(1)
    )
    return found.first() is not None


async def page(
    session: AsyncSession, *, limit: int, before: int = 0, group: str = DEFAULT_GROUP
) -> Sequence[Snapshot]:
    """Up to ``limit`` stored versions of ``group``, newest first; only those below ``before``
    when it is set."""
    query = (
        select(Snapshot).where(Snapshot.node_group == group).order_by(Snapshot.version.desc()).limit(limit)
    )
    if before:
        query = query.where(Snapshot.version < before)
    return (await session.scalars(query)).all()


async def mark_exported(
    session: AsyncSession, version: int, at: datetime, group: str = DEFAULT_GROUP
) -> None:
    """Record that ``version`` of ``group`` left as a pin (the first export's time is kept)."""
    await session.execute(
        update(Snapshot)
        .where(Snapshot.node_group == group, Snapshot.version == version, Snapshot.exported_at.is_(None))
        .values(exported_at=at)
    )


async def prune(
    session: AsyncSession, *, newest: int, keep_last: int, group: str = DEFAULT_GROUP
) -> list[int]:
    """Delete versions of ``group`` older than its last ``keep_last`` (up to ``newest``), except
    those a node of the group still runs and exported pins. Returns the deleted versions."""
    assert keep_last >= 1, "the newest version is always kept"
    running = select(Node.applied_version).where(Node.node_group == group, Node.applied_version > 0)
    result = await session.execute(
        delete(Snapshot)
        .where(
            Snapshot.node_group == group,
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


async def announce(session: AsyncSession, version: int, group: str = DEFAULT_GROUP) -> None:
    """NOTIFY every listening replica of ``version`` of ``group``; delivered when the
    transaction commits."""
    await session.execute(text("SELECT pg_notify(:c, :v)"), {"c": NOTIFY_CHANNEL, "v": f"{group}:{version}"})


async def listen(conn: psycopg.AsyncConnection[Any]) -> None:
    """Subscribe ``conn`` (a dedicated autocommit connection, not a session) to ``announce``."""
    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
