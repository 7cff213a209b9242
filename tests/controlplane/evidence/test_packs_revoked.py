"""Revoked node certificates in Evidence Packs: the pack states when each was revoked (covered
by the seal), and ``evidence verify`` fails a checkpoint signed after its only certificate
was revoked and notes one revoked after the checkpoint it verifies. Real nodes enrolled and
revoked over the Admin API, real checkpoints signed with the certified node keys."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dataplane.evidence import checkpoint, merkle
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack import PackInvalid, canonical
from dataplane.evidence.pack_verify import verify
from dataplane.identity import IdentityFiles
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.tls import ClientTls, aio_channel
from tests.controlplane.evidence.conftest import TIMEOUT, Stream, new_dir
from tests.controlplane.evidence.test_packs import _export, _trusted
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane

LATER = 86_400
"""How far ahead of now node-late signs its checkpoint's time."""


async def _ship(plane: RunningControlPlane, private_tmp: Path, node: str, *, ahead: int) -> None:
    """Enroll ``node`` and ship 4 records of tenant ``node`` with a checkpoint of all 4
    signed by the node key, its time ``ahead`` seconds from now."""
    directory = new_dir(private_tmp, f"{node}-")
    tls = await plane.enroll(node, directory)
    path = log_path(directory, node)
    async with EvidenceLog(path, node) as log:
        for i in range(4):
            log.append({"ts": time.time(), "correlation_id": f"corr-{node}-{i}", "tenant_id": node})
    lines = path.read_bytes().splitlines(keepends=True)
    tree = merkle.Tree()
    for line in lines:
        tree.append(bytes.fromhex(json.loads(line)["hash"]))
    key = IdentityFiles(directory).private_key()
    note = checkpoint.sign(key, f"{node}/0", 4, tree.root(), int(time.time()) + ahead)
    async with aio_channel(plane.node_address, tls) as channel:
        stream = Stream(channel)
        ack = await stream.ship(f"{node}/0", lines, [note.decode()])
        stream.close()
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (4, 1, False), ack


@pytest.fixture
async def plane(database_url: str, private_tmp: Path) -> AsyncIterator[RunningControlPlane]:
    """node-early signed its checkpoint before it was revoked, node-late (its key in the
    wrong hands, say) signed one dated after; both nodes are then revoked."""
    async with running_control_plane(cp_settings(database_url, private_tmp)) as running:
        await _ship(running, private_tmp, "node-early", ahead=0)
        await _ship(running, private_tmp, "node-late", ahead=LATER)
        async with aio_channel(running.address, ClientTls()) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            for node in ("node-early", "node-late"):
                revoked = await admin.RevokeNode(
                    admin_pb2.RevokeNodeRequest(node_id=node), metadata=running.metadata, timeout=TIMEOUT
                )
                assert revoked.revoked_certificates == 1
        yield running


async def test_a_certificate_revoked_after_the_checkpoint_is_noted_next_to_ok(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    out = private_tmp / "early.pack"
    assert await _export(plane, out, tenant_id="node-early") == 4
    certificates = json.loads(out.read_bytes().splitlines()[1])
    (sha256,) = certificates["revoked"]

    code, stdout, err = await _signalbox(
        "evidence", "verify", str(out), "--trust-key", str(plane.trust_key_path)
    )
    assert code == 0, stdout + err
    lines = stdout.splitlines()
    assert lines[0].startswith(f"OK {out}: 4 records in 1 chains")
    assert lines[1].startswith("note: chain node-early/0: its checkpoint of size 4 (signed at 20"), stdout
    assert lines[1].endswith(
        f") verifies with certificate 1 of node 'node-early' ({sha256[:16]}…), revoked later, at "
        f"{certificates['revoked'][sha256]}"
    ), stdout
    assert (
        f"certificate {sha256[:16]}… of node node-early revoked at {certificates['revoked'][sha256]}"
        in stdout
    )

    report = verify(out, _trusted(plane))
    assert report.revoked == [("node-early", sha256, certificates["revoked"][sha256])]
    code, stdout, err = await _signalbox("evidence", "show", str(out))
    assert code == 0, err
    assert f"certificate {sha256[:16]}… of node node-early revoked at" in stdout
    code, stdout, err = await _signalbox("evidence", "show", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["revoked"] == [
        {"node_id": "node-early", "certificate_sha256": sha256, "at": certificates["revoked"][sha256]}
    ]


async def test_a_checkpoint_signed_after_its_only_certificate_was_revoked_fails(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    out = private_tmp / "late.pack"
    assert await _export(plane, out, tenant_id="node-late") == 4
    with pytest.raises(
        PackInvalid,
        match=r"line 3: chain node-late/0: the checkpoint of size 4, signed at .*Z, verifies only with "
        r"certificate 1 of node 'node-late' \([0-9a-f]{16}…\), revoked at .*Z, before it",
    ):
        verify(out, _trusted(plane))
    code, stdout, _ = await _signalbox(
        "evidence", "verify", str(out), "--trust-key", str(plane.trust_key_path)
    )
    assert code == 1
    assert stdout.startswith(f"INVALID {out}: line 3: chain node-late/0: the checkpoint of size 4")


async def test_tampering_with_the_revoked_map_breaks_the_seal(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    trusted = _trusted(plane)
    for node in ("node-early", "node-late"):
        path = private_tmp / f"{node}.pack"
        await _export(plane, path, tenant_id=node)
        lines = path.read_bytes().splitlines(keepends=True)
        certificates = json.loads(lines[1])
        (sha256,) = certificates["revoked"]
        for name, revoked in (
            ("removed", {}),
            ("moved-later", {sha256: "2999-01-01T00:00:00Z"}),
        ):
            changed = path.with_name(f"{node}-{name}.pack")
            section = canonical({**certificates, "revoked": revoked}) + b"\n"
            changed.write_bytes(b"".join([lines[0], section, *lines[2:]]))
            with pytest.raises(
                PackInvalid,
                match=rf"line {len(lines)}: the manifest: content_sha256 is not the SHA-256 of the pack",
            ):
                verify(changed, trusted)

    # A revocation of a certificate the pack does not hold, or at no time, is refused at its line.
    for revoked, problem in (
        ({"ab" * 32: "2026-01-01T00:00:00Z"}, "names no certificate of the pack"),
        ({sha256: "yesterday"}, "'yesterday' is not an RFC 3339 time with a zone"),
    ):
        changed = path.with_name("bad-revoked.pack")
        section = canonical({**certificates, "revoked": revoked}) + b"\n"
        changed.write_bytes(b"".join([lines[0], section, *lines[2:]]))
        with pytest.raises(PackInvalid, match=rf"line 2: revoked '[0-9a-f]+': {problem}"):
            verify(changed, trusted)
