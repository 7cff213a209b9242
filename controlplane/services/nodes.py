"""Data-plane nodes: Hello, ACK and NACK from config sync; status for ListNodes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import Node, NodeNack
from controlplane.db.session import database_now
from controlplane.errors import NotFound
from controlplane.limits import DEFAULT_GROUP
from controlplane.repositories import groups as group_repo
from controlplane.repositories import nodes as repo
from controlplane.repositories import snapshots as snapshot_repo
from signalbox.text import printable, printable_within
from signalbox.wallclock import utc_now

log = logging.getLogger(__name__)

# Reasons, versions and ids come from nodes: what is stored is escaped (no control
# characters, so no forged lines wherever it is shown) and bounded.
MAX_REASON_CHARS = 2000
MAX_VERSION_CHARS = 100


@dataclass(frozen=True, slots=True)
class NodeHello:
    node_id: str
    software_version: str
    mode: int
    scope: dict[str, Any]
    applied_version: int
    applied_hash: bytes
    node_group: str = DEFAULT_GROUP


def _stored_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """The Hello's scope as stored: its strings escaped and bounded like the other node-said
    values. Raw, a NUL in ``site`` is a write PostgreSQL's jsonb refuses (the Hello ended in
    UNKNOWN with the driver's error) and a megabyte ``deployment`` lands in the node's row."""
    return {
        key: printable(value, MAX_VERSION_CHARS) if isinstance(value, str) else value
        for key, value in scope.items()
    }


@dataclass(slots=True)
class NodeService:
    sessions: async_sessionmaker[AsyncSession]
    stale_after: float = 60.0
    """Seconds without a word from a node after which ``node list`` calls it STALE."""
    host_clock: Callable[[], datetime] = utc_now
    """This host's clock: only compared with the database's (``_now``)."""

    async def _now(self, session: AsyncSession) -> datetime:
        """The time nodes are seen at and judged stale by: the database's. A node's stream is
        on one replica and ``node list`` may run on another; by each replica's own clock, a
        skew of more than ``stale_after`` between them showed every node STALE (or none)."""
        return await database_now(session, self.host_clock, "node status times")

    async def hello(self, hello: NodeHello) -> Node:
        """Record a (re)connecting node; returns its row, including its last NACK."""
        async with self.sessions() as session, session.begin():
            now = await self._now(session)
            node = await repo.get(session, hello.node_id, for_update=True)
            if node is None:
                node = Node(node_id=hello.node_id, first_seen_at=now)
                session.add(node)
            # The column's width: clipped with its note, a long version was a write the database
            # refused (the Hello ended INTERNAL, and so did every reconnect of the node).
            node.software_version = printable_within(hello.software_version, MAX_VERSION_CHARS)
            node.mode = hello.mode
            node.scope = _stored_scope(hello.scope)
            node.node_group = hello.node_group
            node.applied_version = hello.applied_version
            node.applied_hash = hello.applied_hash
            node.connected = True
            node.last_seen_at = now
            await self._check_claim(session, hello)
        return node

    async def _check_claim(self, session: AsyncSession, hello: NodeHello) -> None:
        """Say loudly when what a node serves is not what this database signed."""
        if not hello.applied_version:
            return
        stored = await snapshot_repo.get(session, hello.applied_version, hello.node_group)
        if stored is None:
            latest = await snapshot_repo.latest(session, hello.node_group)
            if latest is None or hello.applied_version > latest.version:
                # E.g. the database was reset: the node's rollback protection will refuse
                # every version until ours passes its high-water mark.
                log.error(
                    "node %s serves v%d, newer than any snapshot here (latest v%d); it will refuse "
                    "new snapshots until the version passes that",
                    printable(hello.node_id),
                    hello.applied_version,
                    latest.version if latest is not None else 0,
                )
        elif hello.applied_hash and bytes(stored.sha256) != hello.applied_hash:
            log.error(
                "ALARM: node %s serves v%d with hash %s, but this control plane signed %s under that version",
                printable(hello.node_id),
                hello.applied_version,
                hello.applied_hash.hex(),
                bytes(stored.sha256).hex(),
            )

    async def ack(self, node_id: str, version: int, sha256: bytes) -> bool:
        """Record that the node runs ``version``; False (nothing recorded) when its group has
        no such snapshot with that payload hash: the fleet status shows what a node runs of
        what this control plane signed, never a version a node made up (listed as current)."""
        async with self.sessions() as session, session.begin():
            now = await self._now(session)
            node = await repo.get(session, node_id, for_update=True)
            if node is None:
                return True
            if not await snapshot_repo.published(session, node.node_group, version, sha256):
                return False
            # An old ACK arriving late must not move the applied version backwards.
            if version >= node.applied_version:
                node.applied_version = version
                node.applied_hash = sha256
            node.last_ack_version = version
            node.last_ack_at = now
            node.last_seen_at = now
            return True

    async def nack(self, node_id: str, version: int, sha256: bytes, reason: str) -> bool:
        """Record the node's refusal; whether it refused a snapshot its group was published
        (the only kind worth remembering not to send again)."""
        reason = printable(reason, MAX_REASON_CHARS)
        async with self.sessions() as session, session.begin():
            now = await self._now(session)
            node = await repo.get(session, node_id, for_update=True)
            if node is None:
                return False
            node.last_nack_version = version
            node.last_nack_hash = sha256
            node.last_nack_reason = reason
            node.last_nack_at = now
            node.last_seen_at = now
            # One row per refused (version, hash) is all ``refused`` needs; a node repeating
            # a NACK (or flooding them) must not grow the table it loads on every reconnect.
            # The node row is locked above, so two streams of one node cannot both insert.
            # Only a snapshot of the node's group this control plane published can be one it
            # must not send again: a NACK of any other (version, hash), a node's invention,
            # is shown as the node's last NACK but adds no row (distinct ones were a row each).
            if not await snapshot_repo.published(session, node.node_group, version, sha256):
                return False
            if not await repo.has_nack(session, node_id, version, sha256):
                session.add(NodeNack(node_id=node_id, version=version, sha256=sha256, reason=reason))
            return True

    async def group_exists(self, name: str) -> bool:
        async with self.sessions() as session:
            return await group_repo.get(session, name) is not None

    async def refused(self, node_id: str, limit: int) -> list[tuple[int, bytes]]:
        """The ``limit`` newest (version, payload hash) the node has NACKed: never send those
        again (only the newest snapshot, or deltas to it, are ever sent: older refusals
        matter less, and a stream holds a bounded number)."""
        async with self.sessions() as session:
            return await repo.nacked(session, node_id, limit)

    async def disconnected(self, node_id: str, ended_before: datetime | None = None) -> None:
        """Mark the node disconnected; with ``ended_before`` (a retried write: when its stream
        ended), only when nothing marked it seen after that (it reconnected elsewhere)."""
        async with self.sessions() as session, session.begin():
            node = await repo.get(session, node_id, for_update=True)
            if node is None or (ended_before is not None and node.last_seen_at > ended_before):
                return
            node.connected = False
            node.last_seen_at = await self._now(session)

    async def touch(self, node_ids: Sequence[str]) -> None:
        """Mark nodes with an open stream here as seen now (and connected)."""
        if not node_ids:
            return
        async with self.sessions() as session, session.begin():
            await repo.mark_seen(session, node_ids, await self._now(session))

    async def seen(self, node_id: str) -> None:
        """A heartbeat from the node itself: it is alive, not just its stream open."""
        await self.touch([node_id])

    async def list(self) -> Sequence[Node]:
        async with self.sessions() as session:
            return await repo.list_all(session)

    async def only_mode(self) -> int | None:
        """The mode (proto value) every registered node declares; None when they differ or
        none is registered. Bounded work whatever the size of the fleet."""
        async with self.sessions() as session:
            return await repo.only_mode(session)

    async def fleet(self, group: str = "") -> tuple[Sequence[Node], dict[str, int], datetime]:
        """The nodes of ``group`` (every node when empty), each group's newest stored snapshot
        version, read together, and the time to judge them by (``is_stale``)."""
        async with self.sessions() as session:
            if group and await group_repo.get(session, group) is None:
                raise NotFound("node group", group, field="group")
            nodes = await repo.list_all(session, group)
            return nodes, await snapshot_repo.newest_versions(session), await self._now(session)

    def is_stale(self, node: Node, now: datetime) -> bool:
        """Not seen (Hello, ACK, NACK, heartbeat) for longer than ``stale_after`` seconds."""
        return (now - node.last_seen_at).total_seconds() > self.stale_after
