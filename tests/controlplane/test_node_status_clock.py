"""Node status times (seen, ACK, NACK) are dated by the database's clock: a node's stream is
on one control-plane replica, ``node list`` may run on another."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from controlplane.db.session import create_engine, session_factory
from controlplane.services.nodes import NodeHello, NodeService
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane


@asynccontextmanager
async def _replica(
    control_plane: RunningControlPlane, host_clock: Callable[[], datetime]
) -> AsyncIterator[NodeService]:
    """The node status of another replica on the same database, whose host clock is ``host_clock``."""
    engine = create_engine(control_plane.database_url)
    try:
        yield NodeService(session_factory(engine), host_clock=host_clock)
    finally:
        await engine.dispose()


async def test_a_node_seen_by_a_replica_with_a_clock_behind_is_not_listed_stale(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    """Each replica stamped ``last_seen_at`` with its own clock and ``node list`` compared it
    with its own: a node whose stream is on a replica five minutes behind was listed STALE
    (a minute without a word) while it was connected and heartbeating."""
    async with (
        _replica(control_plane, lambda: datetime.now(UTC) - timedelta(minutes=5)) as behind,
        _replica(control_plane, lambda: datetime.now(UTC) + timedelta(minutes=5)) as ahead,
    ):
        await behind.hello(NodeHello("skew-1", "test-1", 1, {}, 0, b""))
        await behind.seen("skew-1")
        listed = [
            n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes if n.node_id == "skew-1"
        ]
        assert [n.stale for n in listed] == [False]
        await ahead.disconnected("skew-1")
        nodes, _, now = await behind.fleet()
        (row,) = [n for n in nodes if n.node_id == "skew-1"]
        assert not row.connected
        assert not behind.is_stale(row, now)  # seen just now, whichever replica judges
