"""End to end: a real control plane, a real data-plane node and the simulated upstream."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from dataplane.app import DataPlaneNode, NodeSettings
from signalbox.api.admin.v1 import admin_pb2_grpc
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane

NodeFactory = Callable[[str], Awaitable[DataPlaneNode]]


def loopback_node(
    running: RunningControlPlane, node_id: str, private_tmp: Path, **overrides: object
) -> DataPlaneNode:
    """A data-plane node (not started) on loopback, subscribed to ``running`` and trusting
    its key, with fast reconnects; ``overrides`` are further ``NodeSettings`` fields."""
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "control_plane": running.address,
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
                control_plane=control_plane.address,
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
