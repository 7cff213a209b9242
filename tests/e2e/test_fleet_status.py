"""``admin node list``: what each node runs and how far behind it is, STALE nodes, ``--watch``,
and a snapshot too large for a node (NACKed with the reason, old version kept)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest

from dataplane.config.model import Scope
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.common.v1 import common_pb2
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import loopback_node
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually


@asynccontextmanager
async def _admin(running: RunningControlPlane) -> AsyncIterator[Admin]:
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Admin(admin_pb2_grpc.AdminServiceStub(channel), running.metadata)


async def _listed(admin: Admin, node_id: str) -> admin_pb2.Node:
    nodes = {n.node_id: n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes}
    assert node_id in nodes
    return nodes[node_id]


async def _tenants(admin: Admin, prefix: str, count: int) -> None:
    for i in range(count):
        await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name=f"{prefix}-{i:04d}-" + "x" * 40, labels={"team": "y" * 60})
        )


async def _gpu_version(admin: Admin) -> int:
    return int((await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group="gpu"))).version)


async def test_node_list_shows_what_the_node_runs_and_its_lag(database_url: str, private_tmp: Path) -> None:
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(
            running_control_plane(cp_settings(database_url, private_tmp))
        )
        admin = await stack.enter_async_context(_admin(running))
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
        # The node runs in group gpu (site fra-1): node list shows its group's versions.
        await admin.CreateNodeGroup(
            admin_pb2.CreateNodeGroupRequest(group=admin_pb2.NodeGroup(name="gpu", site="fra-1"))
        )
        latest = await _gpu_version(admin)
        size = (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group="gpu"))).size_bytes
        # Room for this snapshot, not for one with a few hundred more tenants.
        limit = size + 4096
        node = await loopback_node(
            running,
            "edge-1",
            private_tmp,
            scope=Scope(node_group="gpu", site="fra-1"),
            sync_max_message_bytes=limit,
        )
        await node.start()
        stack.push_async_callback(node.stop)

        async def applied() -> admin_pb2.Node:
            listed = await _listed(admin, "edge-1")
            assert listed.applied_version == latest
            return listed

        listed = await eventually(applied, message="edge-1 to apply the first snapshot")
        assert listed.software_version
        assert listed.mode == common_pb2.DEPLOYMENT_MODE_CLOUD
        assert (listed.deployment, listed.node_group, listed.site) == ("", "gpu", "fra-1")
        assert (
            listed.applied_hash
            == (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group="gpu"))).payload_sha256
        )
        assert listed.last_ack_version == latest
        assert listed.last_ack_at.seconds
        assert listed.lag == 0
        assert listed.connected
        assert not listed.stale
        assert listed.last_nack_version == 0

        # Grow the config past the node's receive limit in one change: the node can take
        # neither the delta nor the snapshot whole.
        lines = [
            json.dumps({"kind": "tenant", "name": f"big-{i:04d}-" + "x" * 40, "labels": {"team": "y" * 60}})
            for i in range(200)
        ]
        await admin.ImportConfig(admin_pb2.ImportConfigRequest(jsonl="\n".join(lines).encode()))
        big = await _gpu_version(admin)
        assert (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group="gpu"))).size_bytes > limit

        async def refused() -> admin_pb2.Node:
            listed = await _listed(admin, "edge-1")
            assert listed.last_nack_version == big
            return listed

        listed = await eventually(refused, message="edge-1 to NACK the oversize snapshot")
        assert f"exceeds this node's limit of {limit} bytes" in listed.last_nack_reason
        # The node keeps serving the last version that fit; node list shows how far behind.
        assert latest <= listed.applied_version < big
        assert listed.lag == big - listed.applied_version > 0
        assert node.store.version == listed.applied_version


async def test_oversize_snapshot_is_logged_in_one_line_and_not_resent(
    database_url: str, private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(
            running_control_plane(cp_settings(database_url, private_tmp))
        )
        admin = await stack.enter_async_context(_admin(running))
        await _tenants(admin, "big", 100)
        node = await loopback_node(running, "small-1", private_tmp, sync_max_message_bytes=2048)
        caplog.set_level(logging.INFO)
        await node.start()
        stack.push_async_callback(node.stop)
        big = await admin.latest_version()

        async def refused() -> admin_pb2.Node:
            listed = await _listed(admin, "small-1")
            assert listed.last_nack_version == big
            return listed

        listed = await eventually(refused, message="small-1 to NACK the oversize snapshot")
        assert "exceeds this node's limit of 2048 bytes" in listed.last_nack_reason
        assert listed.applied_version == 0
        assert listed.lag == big
        sync = node.sync
        assert sync is not None

        async def reconnected_quietly() -> bool:
            # The refused snapshot is not sent again: the stream stays up.
            assert running.cp.sync is not None
            assert running.cp.sync.streams.get("small-1") == 1
            assert (await _listed(admin, "small-1")).connected
            assert sync.status.connects >= 2
            return True

        await eventually(reconnected_quietly, message="small-1 to stay connected")
        connects = sync.status.connects
        await _listed(admin, "small-1")
        refusals = [
            r
            for r in caplog.records
            if r.name.startswith("controlplane")
            and "refused v" in r.getMessage()
            and "small-1" in r.getMessage()
        ]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert not [r for r in caplog.records if r.name.startswith("controlplane") and r.exc_info]
        assert sync.status.connects == connects


async def test_a_silent_node_turns_stale(database_url: str, private_tmp: Path) -> None:
    settings = cp_settings(database_url, private_tmp, node_stale_after=0.5)
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(running_control_plane(settings))
        admin = await stack.enter_async_context(_admin(running))
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
        node = await loopback_node(running, "beat-1", private_tmp, sync_heartbeat_interval=0.05)
        await node.start()
        try:
            first = await eventually(lambda: _listed(admin, "beat-1"), message="beat-1 listed")
            start = first.last_seen_at.ToNanoseconds()

            async def kept_fresh() -> bool:
                # Heartbeats (the control plane's own touch runs every 30 s here) keep
                # last_seen moving past the stale interval while the node lives.
                listed = await _listed(admin, "beat-1")
                assert listed.last_seen_at.ToNanoseconds() > start + 1_000_000_000
                assert not listed.stale
                return True

            await eventually(kept_fresh, message="heartbeats to keep beat-1 fresh")
        finally:
            await node.stop()

        async def stale() -> admin_pb2.Node:
            listed = await _listed(admin, "beat-1")
            assert listed.stale
            # The control plane sees the stream end on its own time: on a loaded machine
            # after the 0.5 s stale interval, so both are waited for.
            assert not listed.connected
            return listed

        await eventually(stale, message="beat-1 to turn STALE and disconnected")


async def test_node_list_watch_redraws(control_plane: RunningControlPlane, private_tmp: Path) -> None:
    node = await loopback_node(control_plane, "watched-1", private_tmp)
    await node.start()
    try:
        async with _admin(control_plane) as admin:
            await eventually(lambda: _listed(admin, "watched-1"), message="watched-1 listed")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "signalbox",
            "admin",
            "--target",
            control_plane.address,
            "--token",
            control_plane.token,
            "node",
            "list",
            "--watch",
            "--interval",
            "0.1",
            "--iterations",
            "2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ),
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await node.stop()
    assert process.returncode == 0, err.decode()
    text = out.decode()
    frames = text.split("every 0.1s, ")[1:]
    assert len(frames) == 2, text
    for frame in frames:
        header = frame.splitlines()[1].split()
        assert header[:5] == ["NODE", "GROUP", "VERSION", "MODE", "SCOPE"]
        assert "STATUS" in header
        assert "CERT_EXPIRY" in header
        assert "watched-1" in frame


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["controlplane", "serve", "--node-stale-after", "0"], "--node-stale-after"),
        (["controlplane", "serve", "--node-stale-after", "nan"], "--node-stale-after"),
        (["controlplane", "serve", "--max-message-bytes", "0"], "--max-message-bytes"),
        (["dataplane", "serve", "--sync-heartbeat-seconds", "-1"], "--sync-heartbeat-seconds"),
        (["dataplane", "serve", "--sync-max-message-bytes", "0"], "--sync-max-message-bytes"),
    ],
)
def test_nonsensical_fleet_settings_are_refused(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from signalbox.shell.cli import main

    assert main(argv) == 2
    assert flag in capsys.readouterr().err


async def test_a_node_that_enrolled_but_never_connected_is_listed_as_missing(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """E.g. it cannot reach the node port: the operator sees it enrolled, with nothing applied."""
    await control_plane.ensure_group("vault", "air-gapped", "site-a")
    await control_plane.enroll("quiet-1", private_tmp / "quiet-1", group="vault")
    async with _admin(control_plane) as admin:
        latest = (await admin.ListNodes(admin_pb2.ListNodesRequest(group="vault"))).latest_version
        (listed,) = (await admin.ListNodes(admin_pb2.ListNodesRequest(group="vault"))).nodes
        assert (listed.node_id, listed.node_group, listed.site) == ("quiet-1", "vault", "site-a")
        assert listed.mode == common_pb2.DEPLOYMENT_MODE_AIR_GAPPED
        assert (listed.applied_version, listed.connected, listed.lag) == (0, False, latest)
        assert listed.lag > 0
        assert listed.HasField("cert_not_after")
        assert not listed.HasField("last_seen_at")
        everyone = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
        assert [n.node_id for n in everyone] == ["quiet-1"]
        other = (await admin.ListNodes(admin_pb2.ListNodesRequest(group="default"))).nodes
        assert list(other) == []
