"""``pip install signalbox`` (no extra): a data-plane node, without the control plane's dependencies."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.identity.ca import NodeCertificateSpec, new_ca
from dataplane.evidence import checkpoint, merkle, pack
from dataplane.evidence.log import EvidenceLog, log_path
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.dataplane.conftest import AUTH, chat, envelope, pinned_serve_args, snapshot, write_public_key
from tests.helpers import eventually
from tests.packaging.conftest import CONTROLPLANE_EXTRA, Venv, clean_env, run

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def trust_key(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    return write_public_key(tmp_path / "trust.pem", signing_key)


def _pin(directory: Path, key: Ed25519PrivateKey, base_url: str) -> Path:
    """An air-gapped site's pinned snapshot: version 3, the upstream inside site "lab"."""
    snap = snapshot(3, base_url, deployment="")
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    path = directory / "site.snapshot"
    path.write_bytes(envelope(snap, key).SerializeToString())
    return path


def test_the_control_plane_dependencies_are_not_installed(node_venv: Venv, tmp_path: Path) -> None:
    probe = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
    result = run(node_venv.python, "-c", probe, *CONTROLPLANE_EXTRA, "grpc_tools", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_the_command_has_every_node_side_command_and_says_how_to_get_the_control_plane(
    node_venv: Venv, tmp_path: Path
) -> None:
    result = run(node_venv.signalbox, "--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    for command in ("dataplane", "admin", "infer", "simulator"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), result.stdout
    assert not re.search(r"^\s+controlplane\b", result.stdout, re.MULTILINE)
    assert "signalbox[controlplane]" in " ".join(result.stdout.split())


def test_up_says_it_needs_the_control_plane(node_venv: Venv, tmp_path: Path) -> None:
    result = run(node_venv.signalbox, "up", "--once", "--data-dir", tmp_path / "up", cwd=tmp_path)

    assert result.returncode == 1
    assert "pip install 'signalbox[controlplane]'" in result.stderr
    assert not (tmp_path / "up").exists()


def test_verify_checks_a_signed_snapshot(
    node_venv: Venv, tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey
) -> None:
    pin = _pin(tmp_path, signing_key, "http://127.0.0.1:1")

    result = run(
        node_venv.signalbox, "dataplane", "verify", "--snapshot", pin, "--trust-key", trust_key, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert "version: 3" in result.stdout


async def test_a_node_serves_a_pinned_snapshot(
    node_venv: Venv, tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Simulator
) -> None:
    pin = _pin(tmp_path, signing_key, simulator.base_url)
    process = await asyncio.create_subprocess_exec(
        node_venv.signalbox,
        *pinned_serve_args(pin, trust_key, tmp_path / "node", "--node-id", "node-wheel"),
        cwd=tmp_path,
        env=clean_env(),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        address = ""
        while not address:
            line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
            assert line, "node exited before it listened"
            if match := re.search(r"listening on (\S+),", line):
                address = match.group(1)
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await eventually(serving, timeout=30, message="node health SERVING")
            response = await infer_pb2_grpc.InferServiceStub(channel).Infer(chat(), metadata=AUTH, timeout=10)
        assert response.snapshot_version == 3
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _node_pack(directory: Path, signing_key: Ed25519PrivateKey) -> Path:
    """A pack of a chain a node wrote and signed with its certified key, built with the
    pack writer the control plane uses and sealed with ``signing_key``."""
    ca = new_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue_node(NodeCertificateSpec("site-node", "default"), key.public_key(), timedelta(days=1))
    path = log_path(directory, "site-node")
    async with EvidenceLog(path, "site-node", signer=key) as log:
        for i in range(20):
            log.append({"ts": 1.8e9 + i, "correlation_id": f"c-{i}", "tenant_id": "acme"})
    lines = path.read_bytes().splitlines(keepends=True)
    (note,) = checkpoint.read_notes(checkpoint.checkpoints_path(path))
    hashes = [merkle.leaf_hash(bytes.fromhex(json.loads(line)["hash"])) for line in lines]
    chosen = [4, 5, 11]
    searched = pack.Searched("site-node/0", "site-node", 1, 20, len(chosen), 20, "ok", "")
    out = directory / "site.pack"
    with io.BytesIO() as f:
        writer = pack.PackWriter(f)
        writer.header()
        writer.certificates(ca.pem.decode(), {"site-node": [issued.pem]}, revoked={})
        proof = merkle.multiproof(hashes, chosen, 20)
        writer.chain(pack.ChainSection(searched, note.decode(), [h.hex() for h in proof]))
        for i in chosen:
            writer.record(lines[i])
        manifest = {
            "pack_id": "p1", "created": "2026-11-29T00:00:00Z", "kind": "control-plane",
            "query": {"tenant_id": "acme"}, "records": len(chosen),
            "node_ca_sha256": pack.certificate_sha256(ca.pem.decode()),
            "chains": [searched.to_json()], "searched_without_match": [], "alarms": [],
        }  # fmt: skip
        writer.seal(manifest, lambda m: [pack.sign_ed25519(signing_key, m)])
        await asyncio.to_thread(out.write_bytes, f.getvalue())
    return out


async def test_evidence_verify_checks_a_pack_without_the_control_plane(
    node_venv: Venv, tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey
) -> None:
    packed = await _node_pack(tmp_path, signing_key)
    result = run(node_venv.signalbox, "evidence", "verify", packed, "--trust-key", trust_key, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK {packed}: 3 records in 1 chains"), result.stdout
    assert "chain site-node/0: every stored record with seq 1..20 searched, 3 matched" in result.stdout

    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0x01
    packed.write_bytes(bytes(data))
    result = run(node_venv.signalbox, "evidence", "verify", packed, "--trust-key", trust_key, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"INVALID {packed}: line "), result.stdout
