"""Helpers for control-plane tests: an admin client and a scripted config-sync node."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataplane.snapshot.envelope import verify
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2, sync_pb2_grpc
from signalbox.tls import ClientTls, aio_channel
from tests.fixtures.postgres import RunningControlPlane

TIMEOUT = 10.0


@dataclass
class Admin:
    """An AdminService stub that sends the admin token on every call."""

    stub: admin_pb2_grpc.AdminServiceStub
    metadata: tuple[tuple[str, str], ...]

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", self.metadata)
            kwargs.setdefault("timeout", TIMEOUT)
            return method(request, **kwargs)

        return call

    def with_token(self, token: str) -> Admin:
        """The same stub, calling as the admin of ``token``."""
        return Admin(self.stub, (("authorization", f"Bearer {token}"),))

    # Small conveniences used across tests.
    async def seed(self, tenant: str = "acme") -> None:
        """A tenant, a provider and two models."""
        await self.CreateTenant(admin_pb2.CreateTenantRequest(name=tenant, tier="gold"))
        await self.CreateProvider(
            admin_pb2.CreateProviderRequest(
                provider=admin_pb2.Provider(
                    name="sim",
                    type="simulated",
                    base_url="http://127.0.0.1:9/v1",
                    credential=snapshot_pb2.SecretRef(env="SIGNALBOX_CRED_SIM"),
                )
            )
        )
        for alias in ("small", "large"):
            await self.CreateModel(
                admin_pb2.CreateModelRequest(
                    model=admin_pb2.Model(
                        alias=alias,
                        capabilities=[1],
                        deployments=[admin_pb2.Deployment(provider="sim", upstream_model=f"{alias}-v1")],
                    )
                )
            )

    async def latest_version(self) -> int:
        info = await self.GetSnapshot(admin_pb2.GetSnapshotRequest())
        return int(info.version)


async def admin_cli(address: str, token: str, *args: str) -> tuple[int, str, str]:
    """``signalbox admin --target ADDRESS --token TOKEN ARGS`` as a real process: (exit code,
    stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        "admin",
        "--target",
        address,
        "--token",
        token,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def admin(control_plane: RunningControlPlane) -> AsyncIterator[Admin]:
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        yield Admin(admin_pb2_grpc.AdminServiceStub(channel), control_plane.metadata)


@dataclass
class SyncNode:
    """A scripted data-plane node on a real ConfigSyncService stream (mutual TLS with ``tls``,
    a certificate the node got by enrolling)."""

    control_plane: RunningControlPlane
    node_id: str
    tls: ClientTls
    applied_version: int = 0
    applied_hash: bytes = b""
    scope: snapshot_pb2.Scope | None = None
    """What the Hello says the node's scope is (its node group: empty is ``default``)."""
    mode: common_pb2.DeploymentMode.ValueType = common_pb2.DEPLOYMENT_MODE_CLOUD
    """What the Hello says the node's mode is: its certificate's, or it is refused."""
    outbox: asyncio.Queue[sync_pb2.NodeMessage | None] = field(default_factory=asyncio.Queue)
    received: asyncio.Queue[snapshot_pb2.SignedEnvelope] = field(default_factory=asyncio.Queue)
    call: Any = None
    _channel: grpc.aio.Channel | None = None
    _reader: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_code: grpc.StatusCode | None = None

    async def _requests(self) -> AsyncIterator[sync_pb2.NodeMessage]:
        yield sync_pb2.NodeMessage(
            hello=sync_pb2.Hello(
                node_id=self.node_id,
                software_version="test-1",
                mode=self.mode,
                applied_version=self.applied_version,
                applied_hash=self.applied_hash,
                scope=self.scope,
            )
        )
        while (message := await self.outbox.get()) is not None:
            yield message

    async def connect(self) -> SyncNode:
        self._channel = aio_channel(self.control_plane.node_address, self.tls)
        self.call = sync_pb2_grpc.ConfigSyncServiceStub(self._channel).Sync(self._requests())
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self.received.put_nowait(message.envelope)
            self.end_code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            self.end_code = exc.code()
        finally:
            self.ended.set()

    async def next_envelope(self, timeout: float = TIMEOUT) -> snapshot_pb2.SignedEnvelope:
        return await asyncio.wait_for(self.received.get(), timeout)

    def verified(self, envelope: snapshot_pb2.SignedEnvelope) -> snapshot_pb2.Snapshot:
        """Check the signature with the control plane's key and decode the payload."""
        verify(envelope, {self.control_plane.key_id: self.control_plane.public_key})
        snapshot = snapshot_pb2.Snapshot()
        snapshot.ParseFromString(envelope.payload)
        return snapshot

    def ack(self, envelope: snapshot_pb2.SignedEnvelope, version: int) -> None:
        digest = hashlib.sha256(envelope.payload).digest()
        self.outbox.put_nowait(sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=version, payload_sha256=digest)))

    def nack(self, envelope: snapshot_pb2.SignedEnvelope, version: int, reason: str) -> None:
        digest = hashlib.sha256(envelope.payload).digest()
        self.outbox.put_nowait(
            sync_pb2.NodeMessage(nack=sync_pb2.Nack(version=version, payload_sha256=digest, reason=reason))
        )

    async def close(self) -> None:
        self.outbox.put_nowait(None)
        await asyncio.wait_for(self.ended.wait(), TIMEOUT)
        if self._channel is not None:
            await self._channel.close()


async def enrolled_sync_node(running: RunningControlPlane, node_id: str, directory: Path) -> SyncNode:
    """Enroll ``node_id`` with a fresh token (identity under ``directory``) and connect it."""
    return await SyncNode(running, node_id, await running.enroll(node_id, directory)).connect()


@pytest.fixture
async def sync_nodes(control_plane: RunningControlPlane, private_tmp: Path) -> AsyncIterator[Any]:
    """A factory for connected ``SyncNode``s (each enrolled once per node id), closed at the end."""
    nodes: list[SyncNode] = []
    enrolled: dict[str, ClientTls] = {}

    async def connect(node_id: str, applied_version: int = 0, applied_hash: bytes = b"") -> SyncNode:
        if node_id not in enrolled:
            directory = Path(tempfile.mkdtemp(prefix="sync-node-", dir=private_tmp))
            enrolled[node_id] = await control_plane.enroll(node_id, directory)
        tls = enrolled[node_id]
        node = await SyncNode(control_plane, node_id, tls, applied_version, applied_hash).connect()
        nodes.append(node)
        return node

    yield connect
    for node in nodes:
        if not node.ended.is_set():
            node.outbox.put_nowait(None)
            node.call.cancel()
        if node._channel is not None:
            await node._channel.close()
