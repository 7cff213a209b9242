"""Propagation: from an admin change committed to the ACK of every node recorded.

    .venv/bin/python bench/propagation.py                      # 200 nodes, small then 50,000-key snapshot
    .venv/bin/python bench/propagation.py --nodes 20 --changes 3 --tenants 200 --keys 1000 --models 50

A control plane runs in this process (embedded PostgreSQL, as ``snapshot_scale.py``). The
simulated nodes run in a child process (``--nodes-only``): ``--nodes`` real ConfigSync bidi
streams that accept deltas. Each takes what it is sent as a node does: a whole envelope, or
a delta rebuilt on its own last payload (``layout.rebuild``); it checks the Ed25519 signature
over the full payload and ACKs (it does not compile: ``apply_under_load.py`` measures that).
Each simulated node is enrolled for real first (a one-time token, its own P-256 key and CSR,
a certificate from the node CA) and opens its own mutual-TLS connection to the node port.

Checking is O(payload) per node (rebuild, SHA-256, SHA-512 inside Ed25519: ~25 ms at
50,000 keys). In a real fleet every node does it on its own CPU, at the same time; here 200
of them would share two cores and the figure would measure this machine, not propagation.
So by default the simulated nodes of this one process share the work: the first node to
get a given (base, delta) or envelope rebuilds and checks it, the others reuse that verdict
(each still receives, decodes and answers its own message on its own TLS stream).
``--check-each`` makes every node do all of it; the one-node cost is printed separately so
the real-fleet figure is "propagation + one node's check".

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
from dataplane.snapshot.delta import rebuild
from dataplane.snapshot.envelope import key_id_for, verify
from dataplane.snapshot.layout import Layout, scan
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2, sync_pb2_grpc
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


class Checker:
    """Rebuilds and checks what the simulated nodes receive; shares verdicts unless ``each``."""

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey], each: bool) -> None:
        self.trusted = trusted
        self.each = each
        self._done: dict[tuple[bytes, bytes], Layout] = {}

    def whole(self, envelope: snapshot_pb2.SignedEnvelope) -> Layout:
        key = (b"", hashlib.sha256(envelope.payload).digest())
        if not self.each and key in self._done:
            return self._done[key]
        verify(envelope, self.trusted)
        layout = self._done[key] = scan(envelope.payload)
        return layout

    def delta(self, base: Layout, delta: sync_pb2.SnapshotDelta) -> Layout:
        key = (bytes(delta.base_sha256), bytes(delta.payload_sha256))
        if not self.each and key in self._done:
            return self._done[key]
        rebuilt = rebuild(base, delta)
        verify(delta.envelope, self.trusted, message=rebuilt.message)
        self._done[key] = rebuilt.layout
        return rebuilt.layout


async def simulated_node(
    node_id: str, target: str, checker: Checker, channel_factory: ChannelFactory
) -> None:
    """One node's stream: take each envelope or delta, check it, ACK it; until cancelled."""
    outbox: asyncio.Queue[sync_pb2.NodeMessage] = asyncio.Queue()

    async def requests() -> AsyncIterator[sync_pb2.NodeMessage]:
        yield sync_pb2.NodeMessage(
            hello=sync_pb2.Hello(
                node_id=node_id,
                software_version="bench",
                mode=common_pb2.DEPLOYMENT_MODE_CLOUD,
                accepts_delta=True,
            )
        )
        while True:
            yield await outbox.get()

    layout: Layout | None = None
    async with channel_factory(target) as channel:
        call = sync_pb2_grpc.ConfigSyncServiceStub(channel).Sync(requests())
        async for message in call:
            if message.WhichOneof("message") == "delta":
                assert layout is not None, "a delta before any whole snapshot"
                layout = checker.delta(layout, message.delta)
                digest = bytes(message.delta.payload_sha256)
            else:
                layout = checker.whole(message.envelope)
                digest = hashlib.sha256(message.envelope.payload).digest()
            ack = sync_pb2.Ack(version=_version(layout.header), payload_sha256=digest)
            outbox.put_nowait(sync_pb2.NodeMessage(ack=ack))


async def nodes_main(args: argparse.Namespace) -> None:
    checker = Checker(load_trust(Path(args.trust_key)), args.check_each)
    root = Path(args.identities)
    tasks = [
        asyncio.create_task(
            simulated_node(f"sim-{i:04d}", args.target, checker, mtls_channel(root / f"sim-{i:04d}"))
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


async def first_change(cp: ControlPlane, token: str, args: argparse.Namespace) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(cp.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        await admin.UpdateTenant(
            admin_pb2.UpdateTenantRequest(tenant="bench-prop", labels={"n": "seeded"}),
            metadata=metadata,
            timeout=120,
        )
        info = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(), metadata=metadata)
        await wait_acked(cp, info.version, args.nodes, args.timeout)


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


async def one_node_check(cp: ControlPlane) -> None:
    """What one node pays to take the newest change as a delta: rebuild on its payload, then
    the signature over the full payload (the compile is in ``apply_under_load.py``)."""
    assert cp._engine is not None
    assert cp.signer is not None
    async with cp._engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT envelope, delta FROM snapshots WHERE node_group = 'default'"
                    " ORDER BY version DESC LIMIT 2"
                )
            )
        ).all()
    newest, previous = rows
    base = snapshot_pb2.SignedEnvelope.FromString(bytes(previous[0]))
    delta = sync_pb2.SnapshotDelta.FromString(bytes(newest[1]))
    trusted = {cp.signer.key_id: cp.signer.public_key}
    started = time.perf_counter()
    layout = scan(base.payload)
    scan_s = time.perf_counter() - started
    started = time.perf_counter()
    rebuilt = rebuild(layout, delta)
    rebuild_s = time.perf_counter() - started
    started = time.perf_counter()
    verify(delta.envelope, trusted, message=rebuilt.message)
    verify_s = time.perf_counter() - started
    row(
        "one node's check of a delta",
        f"{len(bytes(newest[1]))} B delta: rebuild {rebuild_s * 1000:.1f} ms (incl. SHA-256), "
        f"verify {verify_s * 1000:.1f} ms; a whole payload's layout: {scan_s * 1000:.0f} ms",
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
                *(["--check-each"] if args.check_each else []),
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
                # The nodes take the seeded config first (a jump from the small snapshot to the
                # large one: most of it is new, so it goes whole); then changes at that size.
                started = time.perf_counter()
                await first_change(cp, token, args)
                row(f"every node took the {size.keys}-key config", f"{time.perf_counter() - started:.1f} s")
                await measure(cp, token, args, f"{size.keys}-key snapshot")
                await one_node_check(cp)
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
    parser.add_argument(
        "--check-each",
        action="store_true",
        help="every simulated node rebuilds and verifies on its own (measures this machine's CPU)",
    )
    parser.add_argument("--nodes-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--trust-key", help=argparse.SUPPRESS)
    parser.add_argument("--identities", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse()
    asyncio.run(nodes_main(parsed) if parsed.nodes_only else main(parsed))
