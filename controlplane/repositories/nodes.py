"""Data-plane nodes as seen through config sync."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Node, NodeNack


async def get(session: AsyncSession, node_id: str, *, for_update: bool = False) -> Node | None:
    return await session.get(Node, node_id, with_for_update=for_update)


async def list_all(session: AsyncSession, group: str = "") -> Sequence[Node]:
    """Every node (of ``group`` when given), by group then id."""
    query = select(Node).order_by(Node.node_group, Node.node_id)
    if group:
        query = query.where(Node.node_group == group)
    return (await session.scalars(query)).all()


async def only_mode(session: AsyncSession) -> int | None:
    """The mode every node declares, None when they differ or there is none. Two reads of
    the ends of ``ix_nodes_mode`` (migration 0026), however many nodes there are."""
    low, high = (await session.execute(select(func.min(Node.mode), func.max(Node.mode)))).one()
    return low if low is not None and low == high else None


async def nacked(session: AsyncSession, node_id: str, limit: int) -> list[tuple[int, bytes]]:
    """The node's ``limit`` highest NACKed (version, hash)."""
    rows = await session.execute(
        select(NodeNack.version, NodeNack.sha256)
        .where(NodeNack.node_id == node_id)
        .order_by(NodeNack.version.desc(), NodeNack.id.desc())
        .limit(limit)
    )
    return [(version, bytes(digest)) for version, digest in rows]


async def has_nack(session: AsyncSession, node_id: str, version: int, sha256: bytes) -> bool:
    found = await session.execute(
        select(NodeNack.id)
        .where(NodeNack.node_id == node_id, NodeNack.version == version, NodeNack.sha256 == sha256)
        .limit(1)
    )
    return found.first() is not None


async def mark_seen(session: AsyncSession, node_ids: Sequence[str], now: datetime) -> None:
    """Mark the nodes seen at ``now`` and connected, in one statement."""
    await session.execute(
        update(Node).where(Node.node_id.in_(node_ids)).values(last_seen_at=now, connected=True)
    )
