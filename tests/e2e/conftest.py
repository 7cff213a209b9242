"""End to end: a real control plane, a real data-plane node and the simulated upstream."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.node_settings import NodeSettings
from signalbox.api.admin.v1 import admin_pb2_grpc
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane

NodeFactory = Callable[[str], Awaitable[DataPlaneNode]]


async def loopback_node(
    running: RunningControlPlane, node_id: str, private_tmp: Path, **overrides: object
) -> DataPlaneNode:
    """A data-plane node (not started) on loopback that enrolls with a fresh token for its
    group (the ``scope`` override's node group, else ``default``), syncs from ``running``
    over mTLS and trusts its key, with fast reconnects; ``overrides`` are further
    ``NodeSettings`` fields."""
    scope = overrides.get("scope")
    # The certificate's group is the node's: a Hello naming another group is refused.
    group = scope.node_group if isinstance(scope, Scope) and scope.node_group else "default"
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        **(await running.node_link(group)),
        "trust_keys": (running.trust_key_path,),
        "node_id": node_id,
        "data_dir": Path(tempfile.mkdtemp(prefix=f"{node_id}-", dir=private_tmp)),
        "drain_seconds": 2.0,
        "sync_backoff_base": 0.05,
        "sync_backoff_cap": 0.3,
        **overrides,
    }
    return DataPlaneNode(NodeSettings(**values))  # type: ignore[arg-type]


@pytest.fixture
async def admin(control_plane: RunningControlPlane) -> AsyncIterator[Admin]:
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        yield Admin(admin_pb2_grpc.AdminServiceStub(channel), control_plane.metadata)


@pytest.fixture
async def connected_node(control_plane: RunningControlPlane, private_tmp: Path) -> AsyncIterator[NodeFactory]:
    """Start data-plane nodes subscribed to the control plane and trusting its key."""
    nodes: list[DataPlaneNode] = []

    async def start(node_id: str) -> DataPlaneNode:
        node = DataPlaneNode(
            NodeSettings(
                listen="127.0.0.1:0",
                **(await control_plane.node_link()),
                trust_keys=(control_plane.trust_key_path,),
                node_id=node_id,
                data_dir=Path(tempfile.mkdtemp(prefix=f"{node_id}-", dir=private_tmp)),
                drain_seconds=2.0,
                sync_backoff_base=0.05,
                sync_backoff_cap=0.5,
            )
        )
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in reversed(nodes):
        await node.stop()
