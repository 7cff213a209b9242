"""Evidence Packs end to end: real nodes (enrolled for real, their chains written and signed by
``EvidenceLog`` with the certified node key) ship over the real Ship stream (mTLS) to a real
control plane on real PostgreSQL; packs are exported over the Admin API and by the CLI, and
verified offline with nothing but the control plane's public key."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import pty
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence import checkpoint, merkle, pack
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack import (
    KIND_CONTROL_PLANE,
    PackInvalid,
    canonical,
    header_line,
    manifest_message,
    read_sections,
    seal_line,
    sign_ed25519,
)
from dataplane.evidence.pack_verify import verify
from dataplane.evidence.records import seal
from dataplane.identity import IdentityFiles
from dataplane.snapshot.envelope import key_id_for
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.shell.evidence_cli import show_command
from signalbox.tls import ClientTls, aio_channel
from tests.controlplane.evidence.conftest import Stream, new_dir
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC).timestamp()
MAX_EXPORT = 40


def _fields(node: str, i: int) -> dict[str, Any]:
    """Record ``i`` of ``node``: node-a alternates tenants acme (odd seqs) and globex."""
    tenant = "globex" if node == "node-b" or i % 2 == 0 else "acme"
    return {
        "ts": T0 + i * 60,
        "kind": "chat",
        "correlation_id": f"corr-{node}-{i}",
        "tenant_id": tenant,
        "api_key_id": f"key-{tenant}",
        "snapshot": {"version": 7, "sha256": "ab" * 32},
        "policy": {"id": f"pol-{tenant}", "version": 3},
        "routing": {
            "rule": "default",
            "strategy": "cheapest",
            "reason": "lowest price among capable models",
            "served_by": {"model": "small", "provider": "sim", "deployment": "sim/small"},
        },
        "usage": {"input_tokens": 10 + i, "output_tokens": 20 + i, "reasoning_output_tokens": i - 1},
        "cost": {"currency": "USD", "input_nanos": 100, "output_nanos": 200, "total_nanos": 300},
        "outcome": {"code": "OK" if i % 3 else "PERMISSION_DENIED", "message": "", "error": ""},
    }


async def _ship_node(
    plane: RunningControlPlane, private_tmp: Path, node: str, count: int, every: int, *, last_note: bool
) -> None:
    """Enroll ``node``, write ``count`` records signing a checkpoint every ``every`` (and one at
    close), ship them all with the checkpoints (all but the final one unless ``last_note``)."""
    directory = new_dir(private_tmp, f"{node}-")
    tls = await plane.enroll(node, directory)
    key = IdentityFiles(directory).private_key()
    path = log_path(directory, node)
    async with EvidenceLog(path, node, signer=key, checkpoint_records=10**9, checkpoint_interval=3600) as log:
        for i in range(1, count + 1):
            log.append(_fields(node, i))
            if i % every == 0:
                assert await log.checkpoint()
    notes = [n.decode() for n in checkpoint.read_notes(checkpoint.checkpoints_path(path))]
    lines = path.read_bytes().splitlines(keepends=True)
    async with aio_channel(plane.node_address, tls) as channel:
        stream = Stream(channel)
        ack = await stream.ship(f"{node}/0", lines, notes if last_note else notes[:-1])
        stream.close()
    assert ack.head_seq == count, ack
    assert not ack.error.code, ack


@pytest.fixture(scope="module")
def module_tmp() -> Any:
    with tempfile.TemporaryDirectory(prefix="packs-") as directory:
        os.chmod(directory, 0o700)
        yield Path(directory)


@pytest.fixture
async def plane(database_url: str, private_tmp: Path) -> AsyncIterator[RunningControlPlane]:
    """node-a: 35 records, checkpoints at 10, 20, 30 shipped (31..35 stored, not covered);
    node-b: 12 records, checkpoint at 12."""
    settings = cp_settings(database_url, private_tmp, max_export_records=MAX_EXPORT)
    async with running_control_plane(settings) as running:
        await _ship_node(running, private_tmp, "node-a", 35, 10, last_note=False)
        await _ship_node(running, private_tmp, "node-b", 12, 12, last_note=True)
        yield running


async def _export(plane: RunningControlPlane, out: Path, token: str | None = None, **filters: Any) -> int:
    """Export over the Admin API to ``out``; the record count the first message announced."""
    request = admin_pb2.ExportEvidenceRequest(
        **{k: v for k, v in filters.items() if k not in ("since", "until")}
    )
    for name in ("since", "until"):
        if name in filters:
            getattr(request, name).FromDatetime(filters[name])
    async with aio_channel(plane.address, ClientTls()) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        call = stub.ExportEvidence(request, metadata=(("authorization", f"Bearer {token or plane.token}"),))
        first, data = None, []
        async for chunk in call:
            if first is None:
                first = chunk
            else:
                data.append(chunk.data)
    assert first is not None
    await asyncio.to_thread(out.write_bytes, b"".join(data))
    return first.records


def _trusted(plane: RunningControlPlane) -> dict[str, Any]:
    return {plane.key_id: plane.public_key}


def _seqs(path: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    with open(path, "rb") as f:
        for section, _, value in read_sections(f):
            if section == "record":
                found.setdefault(value.chain_id, []).append(value.fields()["seq"])
    return found


async def test_export_by_tenant_verifies_offline_and_states_every_searched_chain(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    out = private_tmp / "acme.pack"
    code, stdout, err = await _signalbox(
        "admin", "--target", plane.address, "--token", plane.token,
        "evidence", "export", "--tenant", "acme", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote {out}: 15 records" in stdout
    assert out.stat().st_mode & 0o777 == 0o600
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]
    # acme is node-a's odd seqs; 31..35 are after the newest checkpoint: not searched.
    assert _seqs(out) == {"node-a/0": list(range(1, 30, 2))}

    code, stdout, err = await _signalbox(
        "evidence", "verify", str(out), "--trust-key", str(plane.trust_key_path)
    )
    assert code == 0, stdout + err
    assert stdout.startswith(f"OK {out}: 15 records in 1 chains, signed by {plane.key_id}")
    assert "query: tenant_id=acme" in stdout
    assert re.search(
        r"chain node-a/0: every stored record with seq 1\.\.30 searched, 15 matched; its checkpoint "
        r"witnessed by the control plane at 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ; "
        r"31\.\.35 stored but not searched \(no checkpoint covers them yet\)\n",
        stdout,
    ), stdout
    assert "note:" not in stdout  # every checkpoint witnessed, no certificate revoked
    assert "chain node-b/0: every stored record with seq 1..12 searched, no match" in stdout
    audited = sql_rows(
        plane.database_url, "SELECT method, result FROM audit_log WHERE method = 'ExportEvidence'"
    )
    assert [tuple(r) for r in audited] == [("ExportEvidence", "OK")]


async def test_export_by_correlation_id_and_by_time_range(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    one = private_tmp / "one.pack"
    assert await _export(plane, one, correlation_id="corr-node-b-5") == 1
    report = verify(one, _trusted(plane))
    assert (report.records, report.query) == (1, {"correlation_id": "corr-node-b-5"})
    assert _seqs(one) == {"node-b/0": [5]}
    # The smallest checkpoint covering the match: node-b's only one (12).
    assert [(c.chain_id, c.from_seq, c.to_seq, c.records) for c in report.chains] == [("node-b/0", 1, 12, 1)]
    assert {u.chain_id: (u.to_seq, u.head_seq) for u in report.unmatched} == {"node-a/0": (30, 35)}

    window = private_tmp / "window.pack"
    since = datetime.fromtimestamp(T0 + 4 * 60, UTC)
    until = datetime.fromtimestamp(T0 + 9 * 60, UTC)
    assert await _export(plane, window, since=since, until=until) == 10
    report = verify(window, _trusted(plane))
    assert _seqs(window) == {"node-a/0": [4, 5, 6, 7, 8], "node-b/0": [4, 5, 6, 7, 8]}
    # node-a's matches end at 8: proven against its checkpoint of 10, the smallest covering them.
    assert {c.chain_id: c.to_seq for c in report.chains} == {"node-a/0": 10, "node-b/0": 12}
    assert report.query == {
        "since": since.isoformat().replace("+00:00", "Z"),
        "until": until.isoformat().replace("+00:00", "Z"),
    }


async def test_a_viewer_may_export_a_bad_token_may_not_and_a_too_large_query_is_refused(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    assert plane.cp.admin is not None
    _, viewer = await plane.cp.admin.create_token("auditor", role="auditor")
    assert await _export(plane, private_tmp / "v.pack", token=viewer, tenant_id="globex") == 27
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _export(plane, private_tmp / "x.pack", token="sbxadm_not-a-token")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _export(plane, private_tmp / "all.pack")  # 30 + 12 covered records match
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the query matches 42 records; a pack holds at most {MAX_EXPORT}" in str(refused.value.details())

    out = private_tmp / "refused.pack"
    code, _, err = await _signalbox(
        "admin", "--target", plane.address, "--token", plane.token, "evidence", "export", "--out", str(out)
    )
    assert code != 0
    assert "RESOURCE_EXHAUSTED" in err
    assert not out.exists()
    assert not [p for p in os.listdir(private_tmp) if p.endswith(".part")]


# ---- tampering: each change is refused and named ----


@dataclass
class Pack:
    path: Path
    lines: list[bytes]

    def line_of(self, chain: str, seq: int) -> int:
        """The index in ``lines`` of ``chain``'s record ``seq``."""
        for i, line in enumerate(self.lines):
            if (
                f'"chain_id":"{chain}"'.encode() in line
                and f'"seq":{seq},'.encode() in line
                and b'"section"' not in line
            ):
                return i
        raise AssertionError(f"no record {chain} {seq}")

    def section_of(self, chain: str) -> int:
        return next(
            i
            for i, line in enumerate(self.lines)
            if line.startswith(b'{"alarm"') and f'"chain_id":"{chain}"'.encode() in line
        )

    def write(self, lines: list[bytes], name: str) -> Path:
        path = self.path.with_name(name)
        path.write_bytes(b"".join(lines))
        return path


def _set_count(line: bytes, delta: int) -> bytes:
    value = json.loads(line)
    value["records"] += delta
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


@pytest.fixture
async def globex(plane: RunningControlPlane, private_tmp: Path) -> Pack:
    path = private_tmp / "globex.pack"
    await _export(plane, path, tenant_id="globex")
    verify(path, _trusted(plane))
    return Pack(path, path.read_bytes().splitlines(keepends=True))


def _refused(
    plane: RunningControlPlane, path: Path, pattern: str, trusted: dict[str, Any] | None = None
) -> None:
    with pytest.raises(PackInvalid, match=pattern):
        verify(path, trusted or _trusted(plane))


async def test_an_edited_byte_a_deleted_reordered_or_inserted_record_is_named(
    plane: RunningControlPlane, globex: Pack
) -> None:
    lines = list(globex.lines)
    i = globex.line_of("node-b/0", 5)
    lines[i] = lines[i].replace(b'"input_tokens":15', b'"input_tokens":16')
    _refused(
        plane,
        globex.write(lines, "edited.pack"),
        rf"line {i + 1}: chain node-b/0: record seq 5: hash does not match",
    )

    # Deleted, the count fixed to match: the signed checkpoint's root is not reached.
    lines = list(globex.lines)
    s = globex.section_of("node-b/0")
    lines[s] = _set_count(lines[s], -1)
    del lines[globex.line_of("node-b/0", 5)]
    _refused(
        plane,
        globex.write(lines, "deleted.pack"),
        rf"line {s + 1}: chain node-b/0: the multiproof does not verify|line {s + 1}: chain node-b/0: the records and the multiproof make root",
    )

    lines = list(globex.lines)
    a, b = globex.line_of("node-b/0", 3), globex.line_of("node-b/0", 4)
    lines[a], lines[b] = lines[b], lines[a]
    _refused(
        plane,
        globex.write(lines, "reordered.pack"),
        rf"line {b + 1}: chain node-b/0: record seq 3: comes after seq 4",
    )

    # A forged record sealed like the node's and linked to the record before it: the next
    # record does not link to it.
    lines = list(globex.lines)
    s, after = globex.section_of("node-a/0"), globex.line_of("node-a/0", 2)
    lines.insert(after + 1, _forged("node-a", 3, json.loads(lines[after])["hash"]))
    lines[s] = _set_count(lines[s], +1)
    _refused(
        plane,
        globex.write(lines, "inserted.pack"),
        rf"line {after + 3}: chain node-a/0: record seq 4: prev_hash does not link to seq 3",
    )


async def test_a_forged_record_after_the_last_exported_one_is_refused_by_the_signed_tree(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    path = private_tmp / "one.pack"
    await _export(plane, path, correlation_id="corr-node-b-5")
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(4, _forged("node-b", 6, json.loads(lines[3])["hash"]))  # linked to seq 5, nothing after it
    lines[2] = _set_count(lines[2], +1)
    path.write_bytes(b"".join(lines))
    _refused(
        plane,
        path,
        r"line 3: chain node-b/0: the multiproof does not verify|line 3: chain node-b/0: the records and the multiproof",
    )


def _forged(node: str, seq: int, prev_hash: str) -> bytes:
    fields = {**_fields(node, seq), "tenant_id": "globex", "correlation_id": "corr-node-b-5"}
    return seal(
        {
            **fields,
            "record_id": "f" * 32,
            "chain_id": f"{node}/0",
            "node_id": node,
            "seq": seq,
            "prev_hash": prev_hash,
        }
    )


async def test_a_changed_manifest_checkpoint_certificate_or_signing_key_is_named(
    plane: RunningControlPlane, globex: Pack
) -> None:
    seal_at = len(globex.lines)
    value = json.loads(globex.lines[-1])
    manifest = {**value["manifest"], "records": 26}
    lines = [*globex.lines[:-1], seal_line(manifest, value["signatures"])]
    _refused(
        plane,
        globex.write(lines, "manifest.pack"),
        rf"line {seal_at}: the seal's signature by key {plane.key_id} does not verify",
    )

    lines = list(globex.lines)
    s = globex.section_of("node-b/0")
    section = json.loads(lines[s])
    note = section["checkpoint"].split("\n")
    note[1] = "11"  # another size, the node's signature kept
    section["checkpoint"] = "\n".join(note)
    lines[s] = json.dumps(section, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    _refused(
        plane,
        globex.write(lines, "checkpoint.pack"),
        rf"line {s + 1}: chain node-b/0: the checkpoint does not verify with a certificate of its node .*does not verify",
    )

    lines = list(globex.lines)
    certs = json.loads(lines[1])
    certs["nodes"]["node-a"] = certs["nodes"]["node-b"]
    lines[1] = json.dumps(certs, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    _refused(
        plane,
        globex.write(lines, "certificate.pack"),
        r"line 2: certificate 1 of node 'node-a': the node certificate does not name node 'node-a'",
    )

    other = Ed25519PrivateKey.generate()
    resigned = {
        "keyid": key_id_for(other.public_key()),
        "sig": base64.b64encode(other.sign(manifest_message(value["manifest"]))).decode(),
    }
    path = globex.write([*globex.lines[:-1], seal_line(value["manifest"], [resigned])], "other-key.pack")
    _refused(
        plane, path, rf"line {seal_at}: the seal is signed by key '{resigned['keyid']}', which is not trusted"
    )
    # Trusting that key too changes nothing for the pack's own signature... but the pack now has only the other one:
    assert (
        verify(path, {resigned["keyid"]: other.public_key()}).records == 27
    )  # a forger's own key proves nothing


async def test_a_single_changed_byte_anywhere_fails(plane: RunningControlPlane, globex: Pack) -> None:
    data = globex.path.read_bytes()
    trusted = _trusted(plane)
    seal_start = data.rstrip(b"\n").rfind(b"\n") + 1
    # Every line gets changed bytes; the seal (where canonical form and the signature carry
    # the check) every few bytes, the rest at a stride.
    positions = sorted({*range(0, seal_start, 97), *range(seal_start, len(data), 7), len(data) - 1})
    for at in positions:
        for new in {data[at] ^ 0x01, ord("x") if data[at] != ord("x") else ord("y")}:
            changed = data[:at] + bytes([new]) + data[at + 1 :]
            path = globex.path.with_name("flipped.pack")
            path.write_bytes(changed)
            try:
                verify(path, trusted)
            except PackInvalid:
                continue
            raise AssertionError(f"byte {at} changed to {new:#x} still verifies")


async def test_show_renders_the_statement_and_each_record(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    out = private_tmp / "b.pack"
    await _export(plane, out, correlation_id="corr-node-b-3")
    code, stdout, err = await _signalbox("evidence", "show", str(out))
    assert code == 0, err
    assert "not verified here" in stdout
    assert "query: correlation_id=corr-node-b-3" in stdout
    assert "chain node-b/0: every stored record with seq 1..12 searched, 1 matched" in stdout
    when = datetime.fromtimestamp(T0 + 180, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for expected in (
        f"{when}  node-b/0 #3  correlation corr-node-b-3",
        "tenant globex  caller key-globex",
        "model small (sim), why: rule default, strategy cheapest, reason lowest price among capable models",
        "policy pol-globex v3  snapshot v7 abababababababab",
        # The part of the output a reasoning model spent reasoning, which the bill counts.
        "outcome PERMISSION_DENIED  tokens in 13 out 23 (reasoning 2)  cost 0.000000300 USD",
    ):
        assert expected in stdout, stdout
    code, stdout, err = await _signalbox("evidence", "show", str(out), "--json")
    assert code == 0, err
    document = json.loads(stdout)
    assert document["manifest"]["records"] == 1
    assert document["verified"] is False
    (record,) = document["records"]
    assert (record["seq"], record["tenant_id"], record["model"], record["outcome"]) == (
        3,
        "globex",
        "small",
        "PERMISSION_DENIED",
    )


def _run_on_pty(args: list[str]) -> tuple[int, str, bytes]:
    """Run ``signalbox`` with stderr on a pseudo-terminal; (exit code, stdout, what the terminal got)."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "signalbox", *args],
            stdout=subprocess.PIPE,
            stderr=terminal,
            stdin=subprocess.DEVNULL,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not data:
                break
            shown += data
        assert process.stdout is not None
        with process.stdout:
            stdout = process.stdout.read().decode()
        return process.wait(timeout=60), stdout, shown
    finally:
        os.close(controller)


async def test_progress_shows_on_a_terminal_and_not_when_piped(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    out = private_tmp / "progress.pack"
    await _export(plane, out, tenant_id="globex")
    args = ["evidence", "verify", str(out), "--trust-key", str(plane.trust_key_path)]
    code, stdout, shown = _run_on_pty(args)
    assert code == 0, stdout
    assert stdout.startswith("OK "), stdout
    assert re.search(rb"verify: +\d+%\|.*/27\.0 \[.* records/s", shown), shown
    code, stdout, err = await _signalbox(*args)
    assert code == 0
    assert err == ""


async def test_a_version_1_pack_still_verifies_and_other_versions_are_refused(
    plane: RunningControlPlane, globex: Pack
) -> None:
    # What the previous release exported: version 1 header, no revoked map, sealed as then.
    assert globex.lines[0] == header_line(KIND_CONTROL_PLANE, 2)
    certificates = json.loads(globex.lines[1])
    assert certificates.pop("revoked") == {}
    body = [header_line(KIND_CONTROL_PLANE, 1), canonical(certificates) + b"\n", *globex.lines[2:-1]]
    manifest = {
        **json.loads(globex.lines[-1])["manifest"],
        "content_sha256": hashlib.sha256(b"".join(body)).hexdigest(),
    }
    assert plane.cp.signer is not None
    v1 = globex.write(
        [*body, seal_line(manifest, [sign_ed25519(plane.cp.signer.private_key, manifest)])], "v1.pack"
    )
    report = verify(v1, _trusted(plane))
    assert report.records == 27
    assert report.notes == ["a version 1 pack: it states no certificate revocations"]

    # Version 1 has neither revocations nor pruned ranges; unknown versions are refused.
    with_revoked = [body[0], globex.lines[1], *body[2:]]
    _refused(
        plane,
        globex.write([*with_revoked, globex.lines[-1]], "v1-revoked.pack"),
        r"line 2: revoked is only in a version 2",
    )
    _refused(
        plane,
        globex.write([header_line(KIND_CONTROL_PLANE, 3), *globex.lines[1:]], "v3.pack"),
        r"line 1: version 3 \(this reader knows 1, 2\)",
    )


async def test_a_node_shipping_records_without_chain_id_cannot_spoil_other_nodes_packs(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    # node-c's records link, hash and are covered by its own signed checkpoint, but name no
    # chain_id (every record does: the format, the node's and the pack's verifiers say so).
    directory = new_dir(private_tmp, "node-c-")
    tls = await plane.enroll("node-c", directory)
    key = IdentityFiles(directory).private_key()
    lines, prev, tree = [], "0" * 64, merkle.Tree()
    for i in range(1, 4):
        line = seal(
            {
                "record_id": f"{i:032x}",
                "node_id": "node-c",
                "seq": i,
                "prev_hash": prev,
                **_fields("node-c", i),
            }
        )
        prev = json.loads(line)["hash"]
        tree.append(bytes.fromhex(prev))
        lines.append(line)
    note = checkpoint.sign(key, "node-c/0", tree.size, tree.root(), int(datetime.now(UTC).timestamp()))
    async with aio_channel(plane.node_address, tls) as channel:
        stream = Stream(channel)
        ack = await stream.ship("node-c/0", lines, [note.decode()])
        stream.close()
    assert (ack.head_seq, ack.error.code, ack.error.seq) == (0, "INVALID_ARGUMENT", 1)
    assert "record seq 1 (line 1 of the batch): chain_id is missing" in ack.error.message
    assert sql_rows(plane.database_url, "SELECT 1 FROM evidence_records WHERE node_id = 'node-c'") == []
    # node-c's records claim tenant globex: an export of globex still verifies.
    out = private_tmp / "globex.pack"
    await _export(plane, out, tenant_id="globex")
    report = verify(out, _trusted(plane))
    assert {s.chain_id for s in report.chains} == {"node-a/0", "node-b/0"}


def test_show_prints_a_hostile_pack_as_bounded_escaped_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `show` reads a pack nobody verified yet: its record and statement strings are anyone's.
    record = {
        "chain_id": "n/0",
        "seq": 1,
        "ts": 1e300,  # beyond any datetime
        "correlation_id": "\x1b]0;owned\x07\x1b[2J",  # terminal title and clear-screen
        "tenant_id": "a\nforged line",
        "cost": {"currency": "USD", "total_nanos": 10**400},  # beyond a float
    }
    section = pack.ChainSection(pack.Searched("n/0", "n", 1, 1, 1, 1, "tampered", "\x1b[31malarm"), "", [])
    path = tmp_path / "hostile.pack"
    path.write_bytes(
        header_line(pack.KIND_NODE)
        + canonical({"section": "certificates", "node_ca": "", "nodes": {}})
        + b"\n"
        + section.line()
        + seal(record)
        + seal_line({"records": 1}, [])
    )
    assert show_command(argparse.Namespace(pack=str(path), json=False)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2J" in out
    assert "tenant a\\nforged line" in out
    assert "state tampered: \\x1b[31malarm" in out
    assert "?  n/0 #1" in out  # the time it cannot be
