"""Propagation: from an admin change committed to the ACK of every node recorded.

    .venv/bin/python bench/propagation.py                      # 200 nodes, small then 50,000-key snapshot
    .venv/bin/python bench/propagation.py --nodes 20 --changes 3 --tenants 200 --keys 1000 --models 50

A control plane runs in this process (embedded PostgreSQL, as ``snapshot_scale.py``). The
simulated nodes run in a child process (``--nodes-only``): ``--nodes`` real ConfigSync bidi
streams, each of which verifies every envelope's Ed25519 signature against the control
plane's trust key and ACKs it (it does not compile). Each simulated node is enrolled for
real first (a one-time token, its own P-256 key and CSR, a certificate from the node CA)
and opens its own mutual-TLS connection to the node port with it, as a node does.

Per change (``UpdateTenant`` over the Admin API), the figure for a node is its
``last_ack_at`` as the control plane recorded it (``nodes`` table) minus the moment the
admin call returned (committed). Printed: p50/p99/max over every node and change, first
with the small snapshot the control plane starts with, then after seeding the full size.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from snapshot_scale import Size, control_plane, pct, row, seed

from controlplane.app import ControlPlane
from controlplane.services.base import Caller
from dataplane.identity import IdentityFiles, enroll
from dataplane.snapshot.envelope import key_id_for, verify
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import sync_pb2, sync_pb2_grpc
from signalbox.tls import ClientTls, aio_channel

MAX_MESSAGE = 256 * 1024 * 1024
ChannelFactory = Callable[[str], grpc.aio.Channel]


def mtls_channel(identity: Path) -> ChannelFactory:
    """Channels that present the node certificate enrolled under ``identity`` (its own TLS
    connection per node) and pin the node CA."""
    tls = IdentityFiles(identity).client_tls()

    def factory(target: str) -> grpc.aio.Channel:
        return aio_channel(target, tls, options=[("grpc.max_receive_message_length", MAX_MESSAGE)])

    return factory


async def enroll_nodes(cp: ControlPlane, root: Path, count: int) -> None:
    """Enroll ``sim-0000``.. for real: a token each, their own key, a certificate each."""
    assert cp.identities is not None
    for i in range(count):
        node_id = f"sim-{i:04d}"
        _, token = await cp.identities.create_token(
            Caller("", "bench"), group="default", ttl=timedelta(minutes=10)
        )
        await enroll(
            IdentityFiles(root / node_id), address=cp.address, tls=ClientTls(), token=token, node_id=node_id
        )


def _version(payload: bytes) -> int:
    """The Snapshot's ``version`` (field 1, a varint, first in a deterministic encoding)."""
    if not payload or payload[0] != 0x08:
        return 0
    value, shift = 0, 0
    for byte in payload[1:11]:
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7
    return 0


def load_trust(path: Path) -> dict[str, Ed25519PublicKey]:
    public = load_pem_public_key(path.read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    return {key_id_for(public): public}


async def simulated_node(
    node_id: str, target: str, trusted: Mapping[str, Ed25519PublicKey], channel_factory: ChannelFactory
) -> None:
    """One node's stream: verify each envelope's signature, ACK it; until cancelled."""
    outbox: asyncio.Queue[sync_pb2.NodeMessage] = asyncio.Queue()

    async def requests() -> AsyncIterator[sync_pb2.NodeMessage]:
        yield sync_pb2.NodeMessage(
            hello=sync_pb2.Hello(
                node_id=node_id, software_version="bench", mode=common_pb2.DEPLOYMENT_MODE_CLOUD
            )
        )
        while True:
            yield await outbox.get()

    async with channel_factory(target) as channel:
        call = sync_pb2_grpc.ConfigSyncServiceStub(channel).Sync(requests())
        async for message in call:
            envelope = message.envelope
            verify(envelope, trusted)
            payload = envelope.payload
            ack = sync_pb2.Ack(version=_version(payload), payload_sha256=hashlib.sha256(payload).digest())
            outbox.put_nowait(sync_pb2.NodeMessage(ack=ack))


async def nodes_main(args: argparse.Namespace) -> None:
    trusted = load_trust(Path(args.trust_key))
    root = Path(args.identities)
    tasks = [
        asyncio.create_task(
            simulated_node(f"sim-{i:04d}", args.target, trusted, mtls_channel(root / f"sim-{i:04d}"))
        )
        for i in range(args.nodes)
    ]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        task.result()


async def _acked(cp: ControlPlane, version: int) -> list[datetime]:
    assert cp._engine is not None
    async with cp._engine.connect() as conn:
        result = await conn.execute(
            text("SELECT last_ack_at FROM nodes WHERE node_id LIKE 'sim-%' AND last_ack_version >= :v"),
            {"v": version},
        )
        return [r[0] for r in result]


async def wait_acked(cp: ControlPlane, version: int, nodes: int, timeout: float) -> list[datetime]:
    deadline = time.monotonic() + timeout
    while True:
        acked = await _acked(cp, version)
        if len(acked) >= nodes:
            return acked
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(acked)} of {nodes} nodes ACKed v{version} within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def measure(cp: ControlPlane, token: str, args: argparse.Namespace, label: str) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    delays: list[float] = []
    async with grpc.aio.insecure_channel(cp.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for i in range(args.changes):
            await admin.UpdateTenant(
                admin_pb2.UpdateTenantRequest(tenant="bench-prop", labels={"n": f"{label}-{i}"}),
                metadata=metadata,
                timeout=120,
            )
            committed = datetime.now(UTC)
            info = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(), metadata=metadata)
            acked = await wait_acked(cp, info.version, args.nodes, args.timeout)
            delays += [(at - committed).total_seconds() for at in acked]
    row(
        f"{label}: {args.nodes} nodes x {args.changes} changes",
        f"p50 {pct(delays, 0.5) * 1000:.0f} ms  p99 {pct(delays, 0.99) * 1000:.0f} ms  "
        f"max {max(delays) * 1000:.0f} ms  mean {statistics.mean(delays) * 1000:.0f} ms",
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="signalbox-propagation-") as tmp:
        os.chmod(tmp, 0o711)  # embedded PostgreSQL runs as its own user when we are root
        async with control_plane(Path(tmp), args.database_url) as cp:
            assert cp.admin is not None
            _, token = await cp.admin.create_token("bench")
            async with grpc.aio.insecure_channel(cp.address) as channel:
                await admin_pb2_grpc.AdminServiceStub(channel).CreateTenant(
                    admin_pb2.CreateTenantRequest(name="bench-prop"),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            identities = Path(tmp) / "identities"
            await enroll_nodes(cp, identities, args.nodes)
            row("enrolled", f"{args.nodes} node certificates")
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--nodes-only",
                "--target",
                cp.node_address,
                "--identities",
                str(identities),
                "--trust-key",
                str(cp.trust_key_path),
                "--nodes",
                str(args.nodes),
            )
            try:
                assert cp.broker is not None
                latest = cp.broker.latest_for("default")
                assert latest is not None
                await wait_acked(cp, latest.version, args.nodes, args.timeout)
                row("connected and ACKed", f"{args.nodes} simulated nodes")
                await measure(cp, token, args, "small snapshot")
                size = Size(args.tenants, args.keys, args.models, args.policies)
                url = cp.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
                await asyncio.to_thread(seed, url, size)
                row("seeded", f"{size.tenants} tenants, {size.keys} keys, {size.models} models")
                await measure(cp, token, args, f"{size.keys}-key snapshot")
            finally:
                if child.returncode is None:
                    child.terminate()
                await child.wait()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for every ACK of a change"
    )
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--nodes-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--trust-key", help=argparse.SUPPRESS)
    parser.add_argument("--identities", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse()
    asyncio.run(nodes_main(parsed) if parsed.nodes_only else main(parsed))
