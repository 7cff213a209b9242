"""A control plane that serves EvidenceService, with a real checkpoint signature check: an
Ed25519 signature over the note body by a key each test node holds (the node side's certified
key check replaces it in the application)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controlplane.evidence.checkpoints import CHECKPOINT_ORIGIN
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.merkle import Tree
from dataplane.evidence.records import record_hash
from signalbox.api.evidence.v1 import evidence_pb2, evidence_pb2_grpc
from signalbox.tls import ClientTls, aio_channel
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_execute

TIMEOUT = 10.0


@dataclass
class NodeKeys:
    """The test's stand-in for certified node keys."""

    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)

    def key(self, node_id: str) -> Ed25519PrivateKey:
        return self.keys.setdefault(node_id, Ed25519PrivateKey.generate())

    def verify(self, note: str, node_id: str, public_key: bytes = b"") -> None:
        body, _, signatures = note.partition("\n\n")
        public: Ed25519PublicKey | None = self.keys[node_id].public_key() if node_id in self.keys else None
        if public is None:
            raise ValueError(f"no key for node {node_id}")
        for line in signatures.splitlines():
            name, _, sig = line.removeprefix("\u2014 ").partition(" ")
            if name != node_id:
                continue
            try:
                public.verify(base64.b64decode(sig), (body + "\n").encode())
                return
            except (InvalidSignature, ValueError):
                raise ValueError("does not verify with the node's key") from None
        raise ValueError(f"no signature by {node_id}")

    def checkpoint(self, node_id: str, chain_id: str, hashes: list[str], *, root: bytes | None = None) -> str:
        tree = Tree()
        for h in hashes:
            tree.append(bytes.fromhex(h))
        root_hash = tree.root() if root is None else root
        body = f"{CHECKPOINT_ORIGIN}{chain_id}\n{len(hashes)}\n{base64.b64encode(root_hash).decode()}\n"
        signature = base64.b64encode(self.key(node_id).sign(body.encode())).decode()
        return f"{body}\n\u2014 {node_id} {signature}\n"


@pytest.fixture
def node_keys() -> NodeKeys:
    return NodeKeys()


@pytest.fixture
async def evidence_plane(
    database_url: str, private_tmp: Path, node_keys: NodeKeys
) -> AsyncIterator[RunningControlPlane]:
    settings = cp_settings(database_url, private_tmp)
    async with running_control_plane(settings, verify_checkpoint_signature=node_keys.verify) as running:
        yield running


def rehash(record: dict[str, object]) -> dict[str, object]:
    """``record`` with its hash recomputed (a forger who knows the format)."""
    return {**record, "hash": record_hash(record)}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_dir(private_tmp: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=private_tmp))


async def write_records(data_dir: Path, node_id: str, count: int) -> list[bytes]:
    """``count`` real records written by the node's evidence log; its lines."""
    async with EvidenceLog(log_path(data_dir, node_id), node_id) as log:
        for i in range(count):
            log.append(
                {
                    "ts": time.time(),
                    "correlation_id": f"corr-{i}",
                    "tenant_id": "acme",
                    "api_key_id": "key-1",
                    "routing": {"served_by": {"model": "small"}},
                    "outcome": {"code": "OK" if i % 2 == 0 else "PERMISSION_DENIED"},
                }
            )
    return log_path(data_dir, node_id).read_bytes().splitlines(keepends=True)


class Stream:
    """One Ship stream: send a batch, read its answer."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._out: asyncio.Queue[evidence_pb2.ShipBatch | None] = asyncio.Queue()
        self.call = evidence_pb2_grpc.EvidenceServiceStub(channel).Ship(self._requests())

    async def _requests(self) -> AsyncIterator[evidence_pb2.ShipBatch]:
        while (batch := await self._out.get()) is not None:
            yield batch

    async def ship(
        self, chain_id: str, records: list[bytes], checkpoints: list[str] = ()
    ) -> evidence_pb2.ShipAck:  # type: ignore[assignment]
        self._out.put_nowait(
            evidence_pb2.ShipBatch(chain_id=chain_id, records=records, checkpoints=checkpoints)
        )
        return await asyncio.wait_for(self.call.read(), TIMEOUT)

    def close(self) -> None:
        self._out.put_nowait(None)


@pytest.fixture
async def node(evidence_plane: RunningControlPlane, private_tmp: Path) -> AsyncIterator[tuple[Stream, Path]]:
    directory = new_dir(private_tmp, "evidence-node-")
    tls: ClientTls = await evidence_plane.enroll("node-a", directory)
    async with aio_channel(evidence_plane.node_address, tls) as channel:
        stream = Stream(channel)
        yield stream, directory
        stream.close()


RECEIVED_LONG_AGO = "2000-01-01T00:00:00+00:00"


def received_long_ago(database_url: str) -> None:
    """Every evidence record stored so far dated received in 2000: what a wait of the retention
    period after the receipt would do, which retention keeps records for at least. The tables
    are append-only for every role; a superuser's session in replica mode fires no ordinary
    trigger (the tests' database user is the embedded server's superuser)."""
    sql_execute(
        database_url,
        "SET LOCAL session_replication_role = replica",
        f"UPDATE evidence_records SET received_at = '{RECEIVED_LONG_AGO}'",
    )
