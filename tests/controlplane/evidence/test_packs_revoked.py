"""Revoked node certificates in Evidence Packs: the pack states when each was revoked (covered
by the seal), and ``evidence verify`` judges each checkpoint at the time the control plane
witnessed it (its cosignature), or, without one, at the node's own claim: one from before
the revocation is noted next to OK, one from after it fails. Real nodes enrolled and revoked
over the Admin API, real checkpoints signed with the certified node keys."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from controlplane.db.session import create_engine, session_factory
from controlplane.evidence.checkpoints import verify_node_checkpoint
from controlplane.evidence.ingest import Batch, EvidenceIngest
from dataplane.evidence import checkpoint, merkle
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack import PackInvalid, canonical
from dataplane.evidence.pack_facts import rfc3339
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


async def _ship(
    plane: RunningControlPlane, private_tmp: Path, node: str, *, ahead: int, witnessed: bool = True
) -> None:
    """Enroll ``node`` and ship 4 records of tenant ``node`` with a checkpoint of all 4
    signed by the node key, its time ``ahead`` seconds from now. ``witnessed=False``: stored
    by an ingest without a keyring, as a control plane before witnessing stored it."""
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
    if not witnessed:
        engine = create_engine(plane.database_url)
        try:
            spki = (
                IdentityFiles(directory)
                .private_key()
                .public_key()
                .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            )
            ingest = EvidenceIngest(session_factory(engine), verify_node_checkpoint)
            stored = await ingest.ingest(node, Batch(f"{node}/0", lines, [note.decode()]), spki)
        finally:
            await engine.dispose()
        assert (stored.head_seq, stored.checkpoints, stored.refused) == (4, 1, None), stored
        return
    async with aio_channel(plane.node_address, tls) as channel:
        stream = Stream(channel)
        ack = await stream.ship(f"{node}/0", lines, [note.decode()])
        stream.close()
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (4, 1, False), ack


@pytest.fixture
async def plane(database_url: str, private_tmp: Path) -> AsyncIterator[RunningControlPlane]:
    """node-early signed its checkpoint before it was revoked, node-late (its key in the
    wrong hands, say) signed one dated after; both were witnessed when shipped, before the
    revocation. node-old's was also dated after, but stored unwitnessed (before the control
    plane cosigned): only its own claim dates it. All three nodes are then revoked."""
    async with running_control_plane(cp_settings(database_url, private_tmp)) as running:
        await _ship(running, private_tmp, "node-early", ahead=0)
        await _ship(running, private_tmp, "node-late", ahead=LATER)
        await _ship(running, private_tmp, "node-old", ahead=LATER, witnessed=False)
        async with aio_channel(running.address, ClientTls()) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            for node in ("node-early", "node-late", "node-old"):
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
    assert lines[1].startswith(
        "note: chain node-early/0: its checkpoint of size 4 (witnessed by the control plane at 20"
    ), stdout
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


async def test_a_checkpoint_witnessed_before_the_revocation_stands_whatever_time_the_node_claims(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    out = private_tmp / "late.pack"
    assert await _export(plane, out, tenant_id="node-late") == 4
    report = verify(out, _trusted(plane))
    certificates = json.loads(out.read_bytes().splitlines()[1])
    ((sha256, revoked_at),) = certificates["revoked"].items()
    (witnessed,) = report.witnessed.values()
    assert witnessed <= datetime.fromisoformat(revoked_at).timestamp()
    assert report.notes == [
        f"chain node-late/0: its checkpoint of size 4 (witnessed by the control plane at "
        f"{rfc3339(datetime.fromtimestamp(witnessed, UTC))}) verifies with certificate 1 of node "
        f"'node-late' ({sha256[:16]}…), revoked later, at {revoked_at}"
    ]


async def test_an_unwitnessed_checkpoint_dated_after_its_only_certificate_was_revoked_fails(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    out = private_tmp / "old.pack"
    assert await _export(plane, out, tenant_id="node-old") == 4
    with pytest.raises(
        PackInvalid,
        match=r"line 3: chain node-old/0: the checkpoint of size 4, signed at .*Z \(the node's claim\), "
        r"verifies only with certificate 1 of node 'node-old' \([0-9a-f]{16}…\), revoked at .*Z, before it",
    ):
        verify(out, _trusted(plane))
    code, stdout, _ = await _signalbox(
        "evidence", "verify", str(out), "--trust-key", str(plane.trust_key_path)
    )
    assert code == 1
    assert stdout.startswith(f"INVALID {out}: line 3: chain node-old/0: the checkpoint of size 4")


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


async def test_a_checkpoint_witnessed_by_a_replica_with_its_clock_ahead_still_stands_before_the_revocation(
    database_url: str, private_tmp: Path
) -> None:
    """The cosignature was dated by the ingesting replica's clock, the revocation by the
    database's: witnessed by a replica an hour ahead, a checkpoint stored before its node was
    revoked read as seen after it, and the pack of that node's records failed to verify."""
    async with running_control_plane(cp_settings(database_url, private_tmp)) as plane:
        directory = new_dir(private_tmp, "node-fast-")
        await plane.enroll("node-fast", directory)
        path = log_path(directory, "node-fast")
        async with EvidenceLog(path, "node-fast") as log:
            for i in range(4):
                log.append({"ts": time.time(), "correlation_id": f"corr-fast-{i}", "tenant_id": "node-fast"})
        lines = path.read_bytes().splitlines(keepends=True)
        tree = merkle.Tree()
        for line in lines:
            tree.append(bytes.fromhex(json.loads(line)["hash"]))
        key = IdentityFiles(directory).private_key()
        note = checkpoint.sign(key, "node-fast/0", 4, tree.root(), int(time.time()))
        spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        engine = create_engine(plane.database_url)
        try:
            ingest = EvidenceIngest(
                session_factory(engine),
                verify_node_checkpoint,
                keyring=plane.cp.keyring,
                host_clock=lambda: datetime.now(UTC) + timedelta(hours=1),
            )
            stored = await ingest.ingest("node-fast", Batch("node-fast/0", lines, [note.decode()]), spki)
        finally:
            await engine.dispose()
        assert (stored.head_seq, stored.checkpoints, stored.refused) == (4, 1, None), stored
        async with aio_channel(plane.address, ClientTls()) as channel:
            revoked = await admin_pb2_grpc.AdminServiceStub(channel).RevokeNode(
                admin_pb2.RevokeNodeRequest(node_id="node-fast"), metadata=plane.metadata, timeout=TIMEOUT
            )
        assert revoked.revoked_certificates == 1
        out = private_tmp / "fast.pack"
        assert await _export(plane, out, tenant_id="node-fast") == 4
        report = verify(out, _trusted(plane))
    (witnessed,) = report.witnessed.values()
    assert abs(witnessed - time.time()) < 60
    assert len(report.notes) == 1
    assert "revoked later" in report.notes[0]
