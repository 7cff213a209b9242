"""Node groups."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Node, NodeGroup
from controlplane.limits import DEFAULT_GROUP


async def get(session: AsyncSession, name: str, *, for_update: bool = False) -> NodeGroup | None:
    return await session.get(NodeGroup, name, with_for_update=for_update)


async def list_all(session: AsyncSession) -> Sequence[NodeGroup]:
    """Every group, ``default`` first, then by name."""
    query = select(NodeGroup).order_by((NodeGroup.name != DEFAULT_GROUP), NodeGroup.name)
    return (await session.scalars(query)).all()


async def connected_nodes(session: AsyncSession, name: str, stale_after: float) -> list[str]:
    """Ids of the nodes of ``name`` with an open sync stream, by id: marked connected and
    seen within ``stale_after`` seconds (by the database's clock), as the fleet status
    lists them (a replica that died left its nodes marked connected)."""
    seen_since = func.now() - timedelta(seconds=stale_after)
    query = (
        select(Node.node_id)
        .where(Node.node_group == name, Node.connected, Node.last_seen_at > seen_since)
        .order_by(Node.node_id)
    )
    return list((await session.scalars(query)).all())


async def node_counts(session: AsyncSession) -> dict[str, int]:
    """Nodes recorded per group."""
    query = select(Node.node_group, func.count()).group_by(Node.node_group)
    return {group: int(count) for group, count in (await session.execute(query)).all()}
