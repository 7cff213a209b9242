"""The node's config-sync client against a fake ConfigSyncService on a real grpc.aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import signalbox
from dataplane.snapshot.sync_client import full_jitter
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2, sync_pb2_grpc
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.tls import ClientTls
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually

FAKE_PLAINTEXT = ClientTls(insecure=True)
"""The fake control plane below speaks the sync protocol only, in plaintext (what a node does
with --insecure); real mutual TLS with enrolled certificates is tested in tests/e2e/test_node_identity.py."""


class FakeControlPlane(sync_pb2_grpc.ConfigSyncServiceServicer):
    """Records what nodes say; sends what the test puts in ``outbox``."""

    def __init__(self) -> None:
        self.hellos: list[sync_pb2.Hello] = []
        self.answers: list[sync_pb2.NodeMessage] = []
        self.outbox: asyncio.Queue[snapshot_pb2.SignedEnvelope] = asyncio.Queue()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def Sync(
        self, request_iterator: AsyncIterator[sync_pb2.NodeMessage], context: Any
    ) -> AsyncIterator[sync_pb2.ServerMessage]:
        first = await anext(aiter(request_iterator))
        self.hellos.append(first.hello)

        async def read() -> None:
            async for message in request_iterator:
                self.answers.append(message)

        reader = asyncio.create_task(read())
        try:
            while True:
                yield sync_pb2.ServerMessage(envelope=await self.outbox.get())
        finally:
            reader.cancel()

    async def start(self, port: int = 0) -> str:
        server = grpc.aio.server()
        sync_pb2_grpc.add_ConfigSyncServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self.server = server
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    def acks(self) -> list[int]:
        return [m.ack.version for m in self.answers if m.HasField("ack")]

    def nacks(self) -> list[sync_pb2.Nack]:
        return [m.nack for m in self.answers if m.HasField("nack")]


@pytest.fixture
async def control_plane() -> AsyncIterator[FakeControlPlane]:
    fake = FakeControlPlane()
    yield fake
    await fake.stop()


async def _served_version(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await infer_pb2_grpc.InferServiceStub(channel).Infer(chat(), metadata=AUTH, timeout=10)
    return response.snapshot_version


async def test_hello_then_ack_and_nack_with_reason(
    start_node: NodeFactory, control_plane: FakeControlPlane, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    address = await control_plane.start()
    node = await start_node(control_plane=address, control_plane_tls=FAKE_PLAINTEXT, node_id="node-sync")
    await eventually(lambda: control_plane.hellos, message="hello received")
    hello = control_plane.hellos[0]
    assert hello.node_id == "node-sync"
    assert hello.software_version == signalbox.__version__
    assert hello.mode == common_pb2.DEPLOYMENT_MODE_CLOUD
    assert hello.scope.deployment == "test"
    assert hello.applied_version == 0

    good = envelope(snapshot(1, simulator.base_url), signing_key)
    await control_plane.outbox.put(good)
    await node.wait_for_version(1)
    await eventually(lambda: control_plane.acks() == [1], message="ACK of version 1")
    assert control_plane.answers[0].ack.payload_sha256 == node.store.payload_sha256

    await control_plane.outbox.put(envelope(snapshot(2, simulator.base_url), Ed25519PrivateKey.generate()))
    await eventually(lambda: control_plane.nacks(), message="NACK of version 2")
    nack = control_plane.nacks()[0]
    assert nack.version == 2
    assert "no signature by a trusted key" in nack.reason
    assert await _served_version(node.address) == 1


async def test_reconnects_after_control_plane_restart_and_keeps_serving_meanwhile(
    start_node: NodeFactory, control_plane: FakeControlPlane, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    address = await control_plane.start()
    node = await start_node(control_plane=address, control_plane_tls=FAKE_PLAINTEXT)
    await control_plane.outbox.put(envelope(snapshot(1, simulator.base_url), signing_key))
    await node.wait_for_version(1)
    port = control_plane.port

    await control_plane.stop()
    sync = node.sync
    assert sync is not None
    await eventually(lambda: sync.status.failures >= 2, message="reconnect attempts while down")
    assert await _served_version(node.address) == 1

    restarted = FakeControlPlane()
    await restarted.start(port)
    try:
        await eventually(lambda: restarted.hellos, message="node reconnected")
        assert restarted.hellos[0].applied_version == 1
        assert restarted.hellos[0].applied_hash == node.store.payload_sha256
        await restarted.outbox.put(envelope(snapshot(2, simulator.base_url), signing_key))
        await node.wait_for_version(2)
        await eventually(lambda: restarted.acks() == [2], message="ACK of version 2")
    finally:
        await restarted.stop()


def test_full_jitter_grows_exponentially_up_to_the_cap() -> None:
    top = [full_jitter(n, 0.5, 30.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert full_jitter(5, 0.5, 30.0, rand=lambda: 0.0) == 0.0
