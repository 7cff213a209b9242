"""A node's ``connected`` in the fleet status converges: a stream that ended while the
database was down is recorded disconnected once it is back, and a node nobody vouches for
(its replica gone) is not listed connected, nor keeps its group from being deleted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin, SyncNode
from tests.fixtures.postgres import (
    RestartablePostgres,
    RunningControlPlane,
    cp_settings,
    running_control_plane,
    sql_execute,
    sql_rows,
)
from tests.helpers import eventually


async def test_a_node_gone_while_the_database_was_down_is_recorded_disconnected_once_it_is_back(
    restartable_postgres: RestartablePostgres, private_tmp: Path
) -> None:
    database_url = restartable_postgres.database("presence")
    async with running_control_plane(cp_settings(database_url, private_tmp)) as running:
        sync = running.cp.sync
        assert sync is not None
        tls = await running.enroll("gone-1", private_tmp / "gone-1")
        node = await SyncNode(running, "gone-1", tls).connect()
        await node.next_envelope()
        assert sql_rows(database_url, "SELECT connected FROM nodes WHERE node_id = 'gone-1'") == [(True,)]

        await asyncio.to_thread(restartable_postgres.stop, "fast")
        await node.close()  # its stream ends; the write of that is refused
        await eventually(lambda: "gone-1" in sync.disconnects.unrecorded, message="the write refused")

        await asyncio.to_thread(restartable_postgres.start)
        # Well within --node-stale-after (60 s): the row itself, not the lease, says so.
        await eventually(
            lambda: (
                sync.disconnects.unrecorded == {}
                and sql_rows(database_url, "SELECT connected FROM nodes WHERE node_id = 'gone-1'")
                == [(False,)]
            ),
            timeout=15,
            message="gone-1 recorded disconnected",
        )
        async with grpc.aio.insecure_channel(running.address) as channel:
            admin = Admin(admin_pb2_grpc.AdminServiceStub(channel), running.metadata)
            (listed,) = [n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes]
            assert (listed.node_id, listed.connected, listed.stale) == ("gone-1", False, False)


async def _left_by_a_dead_replica(control_plane: RunningControlPlane, node: SyncNode) -> None:
    """Connect ``node``, end its stream, then leave its row as a replica that held its stream
    and died an hour ago would: connected, last seen then."""
    await node.connect()
    await node.next_envelope()
    await node.close()
    await eventually(
        lambda: sql_rows(control_plane.database_url, "SELECT connected FROM nodes") == [(False,)],
        message=f"{node.node_id}'s disconnect recorded",
    )
    sql_execute(
        control_plane.database_url,
        "UPDATE nodes SET connected = true, last_seen_at = now() - interval '1 hour' "
        f"WHERE node_id = '{node.node_id}'",
    )


async def test_a_node_its_replica_stopped_vouching_for_is_not_listed_connected(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """A replica that died with its streams open wrote no disconnect: the rows said
    ``connected`` for good. Its heartbeat rounds (last seen) are the lease."""
    tls = await control_plane.enroll("orphan-1", private_tmp / "orphan-1")
    await _left_by_a_dead_replica(control_plane, SyncNode(control_plane, "orphan-1", tls))
    (listed,) = [n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes]
    assert (listed.node_id, listed.stale, listed.connected) == ("orphan-1", True, False)


async def test_a_group_whose_only_node_nobody_vouches_for_can_be_deleted(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """Deleting a group is refused while its nodes are connected; a node its dead replica
    left marked connected refused it for good."""
    await control_plane.ensure_group("orphans")
    tls = await control_plane.enroll("orphan-2", private_tmp / "orphan-2", group="orphans")
    scope = snapshot_pb2.Scope(node_group="orphans")
    await _left_by_a_dead_replica(control_plane, SyncNode(control_plane, "orphan-2", tls, scope=scope))
    await admin.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name="orphans"))
    assert "orphans" not in [
        g.name for g in (await admin.ListNodeGroups(admin_pb2.ListNodeGroupsRequest())).groups
    ]
