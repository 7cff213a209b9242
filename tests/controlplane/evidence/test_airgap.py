"""An air-gapped node's own Evidence Pack: `signalbox dataplane evidence export` writes every
chain of its data dir sealed by the node key, and `signalbox evidence verify` checks it like a
control-plane pack (node seal, checkpoints, multiproof, hashes, links), vouching for the
node's certificate only against a node CA the verifier names."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.evidence import checkpoint, pack, pack_verify
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.writer_lock import ChainBusy, WriterLock
from dataplane.identity import IdentityFiles, install_bundle
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.certs import TestCA
from tests.fixtures.postgres import RunningControlPlane, sql_rows

NODE = "vault-1"


async def _signalbox(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "signalbox", *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)


async def _write(data_dir: Path, count: int, *, start: int = 0, checkpoint_records: int = 1000) -> None:
    """``count`` records by the node's real evidence log, signed with its key."""
    key = IdentityFiles.under(data_dir).private_key()
    async with EvidenceLog(
        log_path(data_dir, NODE), NODE, signer=key, checkpoint_records=checkpoint_records
    ) as log:
        for i in range(start, start + count):
            log.append(
                {
                    "ts": time.time(),
                    "correlation_id": f"ag-{i}",
                    "tenant_id": "acme",
                    "outcome": {"code": "OK"},
                }
            )


async def provision(admin: Admin, control_plane: RunningControlPlane, data_dir: Path) -> str:
    """Certify the node's key with CertifyNode and install the bundle; the node CA's PEM."""
    await control_plane.ensure_group("vault", "air-gapped", "site-a")
    files = IdentityFiles.under(data_dir)
    issued = await admin.CertifyNode(
        admin_pb2.CertifyNodeRequest(node_id=NODE, csr_pem=files.csr_pem(NODE), group="vault")
    )
    install_bundle(files, (issued.certificate_pem + issued.ca_pem).encode(), NODE)
    return str(issued.ca_pem)


async def export(data_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return await _signalbox(
        "dataplane", "evidence", "export", "--data-dir", str(data_dir), "--out", str(out), *extra
    )


async def test_a_node_pack_exports_verifies_and_names_a_changed_record(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    data_dir = private_tmp / "ag-export"
    await _write(data_dir, 5)  # signed before the node was provisioned
    ca_pem = await provision(admin, control_plane, data_dir)
    await _write(data_dir, 3, start=5)
    out = private_tmp / "ag.pack"
    exported = await export(data_dir, out)
    assert exported.returncode == 0, exported.stderr
    assert f"exported 8 records of 1 chains to {out}" in exported.stdout
    assert out.stat().st_mode & 0o777 == 0o600
    assert not out.with_name(out.name + ".tmp").exists()
    assert out.read_bytes().startswith(b'{"format":"signalbox-evidence-pack","version":1,"kind":"node"}\n')

    verified = await _signalbox("evidence", "verify", str(out))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"OK {out}: 8 records in 1 chains, signed by node key ")
    assert "not vouched for by any trust key" in verified.stdout
    ca_file = private_tmp / "ag-ca.pem"
    ca_file.write_text(ca_pem)
    vouched = await _signalbox("evidence", "verify", str(out), "--node-ca", str(ca_file))
    assert vouched.returncode == 0, vouched.stdout + vouched.stderr
    assert "note:" not in vouched.stdout
    # Another CA does not vouch for it; with the control plane's trust key a certificate is required and there is one.
    other = TestCA(private_tmp / "ag-other-ca", "Another CA").ca_file
    refused = await _signalbox("evidence", "verify", str(out), "--node-ca", str(other))
    assert refused.returncode == 1
    assert "--node-ca: the node certificate was not issued by the given node CA" in refused.stdout
    trusted = await _signalbox(
        "evidence", "verify", str(out), "--trust-key", str(control_plane.trust_key_path)
    )
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    report = pack_verify.verify(out, {})
    assert report.kind == "node"
    assert [c.records for c in report.chains] == [8]
    assert report.query == {"since_seq": 1}

    since = private_tmp / "ag-since.pack"
    assert (await export(data_dir, since, "--since-seq", "6")).returncode == 0
    partial = pack_verify.verify(since, {})
    assert [(c.from_seq, c.to_seq, c.records) for c in partial.chains] == [(6, 8, 3)]

    # One changed byte in record seq 4: refused, naming it.
    lines = out.read_bytes().splitlines(keepends=True)
    seq4 = next(i for i, line in enumerate(lines) if b'"seq":4,' in line)
    lines[seq4] = lines[seq4].replace(b'"ag-3"', b'"ag-X"')
    tampered = private_tmp / "ag-tampered.pack"
    tampered.write_bytes(b"".join(lines))
    refused = await _signalbox("evidence", "verify", str(tampered))
    assert refused.returncode == 1
    assert (
        f"INVALID {tampered}: line {seq4 + 1}: chain {NODE}/0: record seq 4: hash does not match"
        in refused.stdout
    )

    # A forged seal (another key) is refused.
    seal = json.loads(lines[-1])
    seal["signatures"][0]["keyid"] = "0" * 16
    forged = private_tmp / "ag-forged.pack"
    forged.write_bytes(
        b"".join(out.read_bytes().splitlines(keepends=True)[:-1])
        + pack.seal_line(seal["manifest"], seal["signatures"])
    )
    assert ", not the node's" in (await _signalbox("evidence", "verify", str(forged))).stdout


async def test_an_unprovisioned_node_exports_with_its_bare_key_which_a_trust_key_refuses(
    private_tmp: Path,
) -> None:
    data_dir = private_tmp / "ag-bare"
    await _write(data_dir, 4)
    out = private_tmp / "ag-bare.pack"
    assert (await export(data_dir, out)).returncode == 0
    verified = await _signalbox("evidence", "verify", str(out))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "note: sealed by the node's bare public key" in verified.stdout
    key = private_tmp / "any-trust.pub"
    key.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    refused = await _signalbox("evidence", "verify", str(out), "--trust-key", str(key))
    assert refused.returncode == 1
    assert "carries a bare public key, no certificate" in refused.stdout

    nothing = await export(private_tmp / "ag-empty", private_tmp / "ag-empty.pack")
    assert nothing.returncode == 1
    assert "no node key in" in nothing.stderr
    assert "nothing was written" in nothing.stderr
    assert not (private_tmp / "ag-empty.pack").exists()


async def test_export_refuses_a_chain_broken_in_the_middle_and_signs_nothing(private_tmp: Path) -> None:
    data_dir = private_tmp / "ag-broken"
    await _write(data_dir, 3)  # signed at close: checkpoint of 3
    path = log_path(data_dir, NODE)
    async with EvidenceLog(path, NODE) as unsigned:  # 4..6: no checkpoint covers them yet
        for i in range(3, 6):
            unsigned.append({"ts": time.time(), "correlation_id": f"ag-{i}"})
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"".join(lines))
    notes = checkpoint.checkpoints_path(path).read_bytes()
    out = private_tmp / "ag-broken.pack"
    refused = await export(data_dir, out)
    assert refused.returncode == 1, refused.stdout
    assert f"{path.name} does not verify: record seq 5 (line 4): expected seq 4" in refused.stderr
    assert "nothing was written" in refused.stderr
    assert not out.exists()
    assert not out.with_name(out.name + ".tmp").exists()
    # No fresh checkpoint over the broken tree: the node's signature is not on it.
    assert checkpoint.checkpoints_path(path).read_bytes() == notes


# ---- import ----


def _stored(database_url: str) -> tuple[int, int]:
    """Rows of the node's chain, and distinct keys among them."""
    rows = sql_rows(
        database_url,
        f"SELECT count(*), count(DISTINCT seq) FROM evidence_records WHERE chain_id = '{NODE}/0'",
    )
    return int(rows[0][0]), int(rows[0][1])


async def test_an_imported_node_pack_is_stored_once_and_queryable(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    data_dir = private_tmp / "ag-import"
    await provision(admin, control_plane, data_dir)
    await _write(data_dir, 7, checkpoint_records=3)
    out = private_tmp / "ag-import.pack"
    assert (await export(data_dir, out)).returncode == 0
    target = ("admin", "--target", control_plane.address, "--token", control_plane.token)

    imported = await _signalbox(*target, "--json", "evidence", "import", str(out))
    assert imported.returncode == 0, imported.stderr
    [chain] = json.loads(imported.stdout)["chains"]
    assert chain == {"chain_id": f"{NODE}/0", "stored": "7", "head_seq": "7", "checkpoints": "1"}
    assert _stored(control_plane.database_url) == (7, 7)

    again = await _signalbox(*target, "evidence", "import", str(out))
    assert again.returncode == 0, again.stderr
    assert f"{NODE}/0" in again.stdout
    [row] = [line.split() for line in again.stdout.splitlines() if line.startswith(NODE)]
    assert row[:5] == [f"{NODE}/0", "0", "7", "7", "0"]  # stored, duplicates, head, new checkpoints
    assert _stored(control_plane.database_url) == (7, 7)

    # A control plane's pack (of what it already stores) and a file that is no pack are refused.
    cp_pack = private_tmp / "ag-cp.pack"
    exported = await _signalbox(*target, "evidence", "export", "--tenant", "acme", "--out", str(cp_pack))
    assert exported.returncode == 0, exported.stderr
    refused = await _signalbox(*target, "evidence", "import", str(cp_pack))
    assert "INVALID_ARGUMENT: pack: line 1: kind 'control-plane': only a node's own pack" in refused.stderr
    junk = private_tmp / "ag-junk.pack"
    junk.write_bytes(b"\x00" * 100 + b"\n")
    refused = await _signalbox(*target, "evidence", "import", str(junk))
    assert "INVALID_ARGUMENT: pack: line 1: the header is not JSON" in refused.stderr
    assert _stored(control_plane.database_url) == (7, 7)

    queried = await _signalbox(*target, "--json", "evidence", "query", "--correlation-id", "ag-4")
    assert queried.returncode == 0, queried.stderr
    assert [(r["chain_id"], r["seq"]) for r in json.loads(queried.stdout)["records"]] == [(f"{NODE}/0", "5")]


async def test_a_changed_byte_an_unprovisioned_or_a_revoked_node_is_refused(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    target = ("admin", "--target", control_plane.address, "--token", control_plane.token)
    bare_dir = private_tmp / "ag-import-bare"
    await _write(bare_dir, 3)
    bare = private_tmp / "ag-import-bare.pack"
    assert (await export(bare_dir, bare)).returncode == 0
    assert control_plane.cp.admin is not None
    _, viewer = await control_plane.cp.admin.create_token("auditor", role="auditor")
    as_viewer = await _signalbox(
        "admin", "--target", control_plane.address, "--token", viewer, "evidence", "import", str(bare)
    )
    assert "PERMISSION_DENIED: role 'auditor' may not call ImportEvidence" in as_viewer.stderr
    refused = await _signalbox(*target, "evidence", "import", str(bare))
    assert refused.returncode != 0
    assert "PERMISSION_DENIED" in refused.stderr
    assert (
        f"node {NODE!r}: the pack is sealed by a key no certificate this control plane issued"
        in refused.stderr
    )

    data_dir = private_tmp / "ag-import-tamper"
    await provision(admin, control_plane, data_dir)
    await _write(data_dir, 6)
    out = private_tmp / "ag-import-tamper.pack"
    assert (await export(data_dir, out)).returncode == 0
    lines = out.read_bytes().splitlines(keepends=True)
    seq3 = next(i for i, line in enumerate(lines) if b'"seq":3,' in line)
    lines[seq3] = lines[seq3].replace(b'"ag-2"', b'"ag-Z"')
    tampered = private_tmp / "ag-import-tampered.pack"
    tampered.write_bytes(b"".join(lines))
    refused = await _signalbox(*target, "evidence", "import", str(tampered))
    assert refused.returncode != 0
    assert "INVALID_ARGUMENT" in refused.stderr
    assert f"line {seq3 + 1}: chain {NODE}/0: record seq 3: hash does not match" in refused.stderr
    assert _stored(control_plane.database_url) == (0, 0)

    await admin.RevokeNode(admin_pb2.RevokeNodeRequest(node_id=NODE))
    refused = await _signalbox(*target, "evidence", "import", str(out))
    assert refused.returncode != 0
    assert "the certificate of the key that sealed the pack is revoked" in refused.stderr
    assert _stored(control_plane.database_url) == (0, 0)


async def test_export_is_refused_while_the_node_writes_and_a_second_writer_cannot_start(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    """The node holds its chains' writer locks while it runs: an export (which signs a fresh
    checkpoint) or a second node on the same data dir would interleave with it."""
    data_dir = private_tmp / "ag-running"
    await _write(data_dir, 2)
    key = IdentityFiles.under(data_dir).private_key()
    out = private_tmp / "ag-running.pack"
    async with EvidenceLog(log_path(data_dir, NODE), NODE, signer=key) as running:
        running.append({"ts": time.time(), "correlation_id": "while-running", "outcome": {"code": "OK"}})
        refused = await export(data_dir, out)
        assert refused.returncode == 1
        assert f"{NODE}@0.jsonl: written by a running process (pid {os.getpid()})" in refused.stderr
        assert "stop it, then export; nothing was written" in refused.stderr
        assert not out.exists()
        second = EvidenceLog(log_path(data_dir, NODE), NODE, signer=key)
        with pytest.raises(ChainBusy, match=rf"pid {os.getpid()}"):
            await second.start()
    # Stopped (the lock goes with the log, or with the process however it dies): export runs.
    exported = await export(data_dir, out)
    assert exported.returncode == 0, exported.stderr
    assert "exported 3 records of 1 chains" in exported.stdout


async def test_a_killed_writer_leaves_no_stale_lock(private_tmp: Path) -> None:
    data_dir = private_tmp / "ag-killed"
    script = (
        "import asyncio, os, sys, time\n"
        "from pathlib import Path\n"
        "from dataplane.evidence.log import EvidenceLog, log_path\n"
        "async def main():\n"
        f"    async with EvidenceLog(log_path(Path({str(data_dir)!r}), {NODE!r}), {NODE!r}) as log:\n"
        "        log.append({'ts': time.time()})\n"
        "        print('open', flush=True)\n"
        "        await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), 60) == b"open\n"
    with pytest.raises(ChainBusy, match=rf"pid {child.pid}"):
        WriterLock(log_path(data_dir, NODE)).acquire()
    child.kill()
    await child.wait()
    with WriterLock(log_path(data_dir, NODE)):
        pass


async def test_an_import_a_chain_of_which_is_refused_exits_non_zero_naming_it(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    """A pack that verifies can still be refused by the store, chain by chain (here: it
    starts at seq 4 and the store holds nothing of the chain). The admin's script must not
    take that for an import and delete the pack."""
    data_dir = private_tmp / "ag-import-gap"
    await provision(admin, control_plane, data_dir)
    await _write(data_dir, 7, checkpoint_records=3)
    tail = private_tmp / "ag-import-gap-tail.pack"
    assert (await export(data_dir, tail, "--since-seq", "4")).returncode == 0
    target = ("admin", "--target", control_plane.address, "--token", control_plane.token)

    refused = await _signalbox(*target, "evidence", "import", str(tail))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"chain '{NODE}/0' not imported from seq 4: " in refused.stderr
    assert "gap, expected seq 1 next" in refused.stderr
    assert _stored(control_plane.database_url) == (0, 0)

    whole = private_tmp / "ag-import-gap-whole.pack"
    assert (await export(data_dir, whole)).returncode == 0
    for pack_file in (whole, tail):  # all of it, then the tail again: held already
        imported = await _signalbox(*target, "evidence", "import", str(pack_file))
        assert imported.returncode == 0, imported.stderr
        assert imported.stderr == ""
    assert _stored(control_plane.database_url) == (7, 7)
