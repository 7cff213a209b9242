"""The control plane witnesses each checkpoint it stores (a C2SP cosignature with its own
clock's time), so an auditor need not take the node's ``time`` line on trust. A real node
enrolled for real ships its real signed chain to a real control plane; packs are exported over
the Admin API and verified offline with the control plane's public key alone."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dataplane.evidence import checkpoint, cosignature
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack import PackInvalid
from dataplane.evidence.pack_verify import verify
from dataplane.identity import IdentityFiles
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.tls import ClientTls, aio_channel
from tests.controlplane.evidence.conftest import TIMEOUT, Stream, new_dir
from tests.controlplane.evidence.test_packs import _export, _trusted
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows


async def _ship(
    plane: RunningControlPlane, private_tmp: Path, node: str, extra_line: str = ""
) -> tuple[str, int]:
    """Enroll ``node``, write 6 records with the certified key signing a checkpoint at close,
    ship them with it (``extra_line`` appended to the note as another signature line); the
    ACK's error message ("" when none), its checkpoint count and its head seq."""
    directory = new_dir(private_tmp, f"{node}-")
    tls = await plane.enroll(node, directory)
    path = log_path(directory, node)
    key = IdentityFiles(directory).private_key()
    async with EvidenceLog(path, node, signer=key, checkpoint_records=10**9, checkpoint_interval=3600) as log:
        for i in range(6):
            log.append({"ts": time.time(), "correlation_id": f"corr-{node}-{i}", "tenant_id": node})
    (note,) = [n.decode() for n in checkpoint.read_notes(checkpoint.checkpoints_path(path))]
    lines = path.read_bytes().splitlines(keepends=True)
    async with aio_channel(plane.node_address, tls) as channel:
        stream = Stream(channel)
        ack = await stream.ship(f"{node}/0", lines, [note + extra_line])
        stream.close()
    return ack.error.message, ack.checkpoints, ack.head_seq


def _stored_note(plane: RunningControlPlane, chain_id: str) -> bytes:
    assert "'" not in chain_id
    (row,) = sql_rows(
        plane.database_url, f"SELECT note FROM evidence_checkpoints WHERE chain_id = '{chain_id}'"
    )
    return str(row[0]).encode()


@pytest.fixture
async def plane(database_url: str, private_tmp: Path) -> AsyncIterator[RunningControlPlane]:
    async with running_control_plane(cp_settings(database_url, private_tmp)) as running:
        yield running


async def test_a_stored_checkpoint_carries_the_control_planes_cosignature_dated_by_its_clock(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    before = int(time.time())
    assert await _ship(plane, private_tmp, "node-w") == ("", 1, 6)
    after = int(time.time())
    note = _stored_note(plane, "node-w/0")
    (witness,) = cosignature.witnesses(note, _trusted(plane))
    assert witness.key_id == plane.key_id
    assert before <= witness.time <= after
    # The node's own signature is untouched: the note still verifies with its certified key.
    assert checkpoint.parse(note).size == 6
    assert note.count("\n\u2014 ".encode()) == 2
    # A key the verifier does not know is ignored, not an error (C2SP).
    assert cosignature.witnesses(note, {}) == []

    out = private_tmp / "w.pack"
    assert await _export(plane, out, tenant_id="node-w") == 6
    report = verify(out, _trusted(plane))
    assert report.witnessed == {"node-w/0": witness.time}
    assert report.notes == []


async def test_a_node_cannot_bring_a_cosignature_of_its_own(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    forged = f"\u2014 {cosignature.key_name(plane.key_id)} AAAA\n"
    message, taken, head = await _ship(plane, private_tmp, "node-f", forged)
    assert (taken, head) == (0, 0)
    assert message == (
        "chain 'node-f/0': checkpoint 1: carries a signature line by signalbox-control-plane/…: only the "
        "control plane adds its cosignature, when it stores the checkpoint"
    )
    assert sql_rows(plane.database_url, "SELECT count(*) FROM evidence_checkpoints") == [(0,)]
    assert sql_rows(plane.database_url, "SELECT count(*) FROM evidence_records") == [(0,)]


async def test_an_edited_witness_time_or_line_fails_verification_naming_it(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    for node in ("node-e", "node-e2"):
        assert await _ship(plane, private_tmp, node) == ("", 1, 6)
    out = private_tmp / "e.pack"
    assert await _export(plane, out, tenant_id="node-e") == 6
    lines = out.read_bytes().splitlines(keepends=True)
    section = json.loads(lines[2])
    note: str = section["checkpoint"]
    body, _, signatures = note.partition("\n\n")
    node_line, witness_line = signatures.rstrip("\n").split("\n")
    name, _, blob = witness_line.partition(" ")[2].partition(" ")
    raw = bytearray(base64.b64decode(blob))
    raw[11] ^= 1  # the witness time, one second off
    moved = _stored_note(plane, "node-e2/0").decode().rstrip("\n").rsplit("\n", 1)[1]
    assert moved.startswith(f"\u2014 {name} ")
    for changed_line, problem in (
        (f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}", "does not verify"),
        (moved, "does not verify"),  # the cosignature of another chain's checkpoint
        (f"\u2014 {name} {blob[:-8]}", "is not one by that key"),
    ):
        changed = out.with_name("changed.pack")
        section["checkpoint"] = f"{body}\n\n{node_line}\n{changed_line}\n"
        changed.write_bytes(b"".join([*lines[:2], (json.dumps(section) + "\n").encode(), *lines[3:]]))
        with pytest.raises(
            PackInvalid,
            match=rf"line 3: chain node-e/0: the checkpoint's the cosignature of {name} {problem}",
        ):
            verify(changed, _trusted(plane))


async def test_after_a_key_rotation_the_active_key_vouches_for_what_the_old_one_witnessed(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    assert await _ship(plane, private_tmp, "node-r") == ("", 1, 6)
    (first,) = cosignature.witnesses(_stored_note(plane, "node-r/0"), _trusted(plane))
    async with aio_channel(plane.address, ClientTls()) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        rotated = await admin.RotateSigningKey(
            admin_pb2.RotateSigningKeyRequest(), metadata=plane.metadata, timeout=TIMEOUT
        )
        await admin.RevokeSigningKey(
            admin_pb2.RevokeSigningKeyRequest(key_id=plane.key_id), metadata=plane.metadata, timeout=TIMEOUT
        )
    second = rotated.key.key_id
    (row,) = sql_rows(plane.database_url, f"SELECT public_key FROM signing_keys WHERE key_id = '{second}'")
    public = Ed25519PublicKey.from_public_bytes(bytes(row[0]))  # type: ignore[arg-type]
    out = private_tmp / "r.pack"
    assert await _export(plane, out, tenant_id="node-r") == 6
    # Only the new key is trusted now: the old key's line is ignored, the new one's verifies
    # and states the time the old key saw the checkpoint.
    report = verify(out, {second: public})
    assert report.witnessed == {"node-r/0": first.time}
    assert report.notes == []
    # The store is unchanged (append-only): the stored note carries the old key's line only.
    assert cosignature.cosigned_by(_stored_note(plane, "node-r/0")) == {plane.key_id}
