"""A control plane that serves EvidenceService, with a real checkpoint signature check: an
Ed25519 signature over the note body by a key each test node holds (the node side's certified
key check replaces it in the application)."""

from __future__ import annotations

import base64
import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controlplane.evidence.ingest import CHECKPOINT_ORIGIN
from dataplane.evidence.log import record_hash
from dataplane.evidence.merkle import Tree
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane


@dataclass
class NodeKeys:
    """The test's stand-in for certified node keys."""

    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)

    def key(self, node_id: str) -> Ed25519PrivateKey:
        return self.keys.setdefault(node_id, Ed25519PrivateKey.generate())

    def verify(self, note: str, node_id: str) -> None:
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
