"""Checkpoints signed by the log, proofs from a chain's files, and the verifier naming the
first bad record or checkpoint (tamper tests), from the API and from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.identity.ca import NodeCertificateSpec, new_ca
from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import checkpoint, merkle
from dataplane.evidence import log as log_module
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.proofs import Subtrees, consistency, inclusion, verify_chain_files
from dataplane.evidence.records import read_records, record_hash, seal
from dataplane.identity import IdentityFiles
from tests.helpers import eventually


async def _write_chain(
    path: Path, key: ec.EllipticCurvePrivateKey, count: int, *, every: int = 4, node: str = "n"
) -> None:
    """``count`` records, a checkpoint every ``every`` records (and one at close)."""
    async with EvidenceLog(path, node, signer=key, checkpoint_records=every, checkpoint_interval=60) as log:
        for i in range(1, count + 1):
            log.append({"x": i - 1})
            if i % every == 0:
                await eventually(lambda n=i: log.signed_size == n, message=f"checkpoint at {i}")


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def test_checkpoints_every_n_records_and_at_close_verify_with_proofs(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "evidence" / "n@0.jsonl"
    await _write_chain(path, key, 10)
    notes = checkpoint.read_notes(checkpoint.checkpoints_path(path))
    assert [checkpoint.verify(n, key.public_key()).size for n in notes] == [4, 8, 10]
    assert (path.stat().st_mode & 0o777, checkpoint.checkpoints_path(path).stat().st_mode & 0o777) == (
        0o600,
        0o600,
    )
    records = list(read_records(path))
    assert {r["chain_id"] for r in records} == {"n/0"}
    report = verify_chain_files(path, key.public_key())
    assert (report.chain_id, report.records, report.checkpoints, report.signed_size) == ("n/0", 10, 3, 10)

    for seq in range(1, 11):
        for size in (s for s in (4, 8, 10) if s >= seq):
            proof = inclusion(path, seq=seq, checkpoint_size=size)
            assert proof.verify(key.public_key()).size == size
    by_id = inclusion(path, record_id=records[6]["record_id"])
    assert by_id.index == 6
    assert by_id.record_hash == bytes.fromhex(records[6]["hash"])
    with pytest.raises(merkle.ProofError):
        inclusion(path, seq=9, checkpoint_size=8)  # not in that checkpoint yet
    for old, new in ((4, 8), (4, 10), (8, 10), (10, 10)):
        old_cp, new_cp = consistency(path, old, new).verify(key.public_key())
        assert (old_cp.size, new_cp.size) == (old, new)

    # A proof does not carry over to another record or another key.
    wrong = type(by_id)(bytes.fromhex(records[5]["hash"]), 6, by_id.path, by_id.note)
    with pytest.raises(merkle.ProofError):
        wrong.verify(key.public_key())
    with pytest.raises(checkpoint.CheckpointInvalid):
        by_id.verify(ec.generate_private_key(ec.SECP256R1()).public_key())


async def test_checkpoints_every_t_ms_only_when_there_are_new_records(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "n@0.jsonl"
    async with EvidenceLog(path, "n", signer=key, checkpoint_records=1000, checkpoint_interval=0.05) as log:
        log.append({"x": 1})
        await eventually(lambda: log.signed_size == 1, message="timed checkpoint")
        log.append({"x": 2})
        await eventually(lambda: log.signed_size == 2, message="second timed checkpoint")
        signed, rounds = log.checkpoints_signed, log.checkpoint_rounds
        # Several intervals without records: nothing new is signed.
        await eventually(lambda: log.checkpoint_rounds >= rounds + 3, message="idle intervals")
        assert log.checkpoints_signed == signed
    assert len(checkpoint.read_notes(checkpoint.checkpoints_path(path))) == 2


async def test_restart_rebuilds_the_tree_and_continues_the_checkpoints(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "n@0.jsonl"
    await _write_chain(path, key, 6)
    # A crash in the middle of writing a checkpoint leaves a torn one: cut at start.
    cps = checkpoint.checkpoints_path(path)
    cps.write_bytes(cps.read_bytes() + b"signalbox.evidence/n/0\n7\n")
    async with EvidenceLog(path, "n", signer=key, checkpoint_records=4, checkpoint_interval=60) as log:
        assert (log.head.seq, log.signed_size) == (6, 6)
        log.append({"x": 6})
    report = verify_chain_files(path, key.public_key())
    assert (report.records, report.checkpoints, report.signed_size) == (7, 3, 7)


async def test_a_close_during_a_checkpoint_write_keeps_the_checkpoints_in_order(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aclose cancels the checkpoint task while its thread is writing a checkpoint (held here
    # at a gate). The thread writes on regardless; the closing checkpoint, of more records,
    # must not reach the file before it: the file would then shrink, and the chain fail
    # verification (seen once in CI: "checkpoint 4 (size 2240): smaller than checkpoint 3").
    real = log_module._sign_and_store
    entered, gate = threading.Event(), threading.Event()

    def gated(*args: Any) -> None:
        if not entered.is_set():
            entered.set()
            gate.wait(2)  # the fixed code waits here until this times out
        else:
            real(*args)
            gate.set()  # the code before the fix got here first: release the older write after
            return
        real(*args)

    monkeypatch.setattr(log_module, "_sign_and_store", gated)
    path = tmp_path / "n@0.jsonl"
    log = EvidenceLog(path, "n", signer=key, checkpoint_records=4, checkpoint_interval=60)
    await log.start()
    for i in range(4):
        log.append({"x": i})
    await eventually(entered.is_set, message="the checkpoint task writing")
    log.append({"x": 4})
    await log.aclose()

    notes = checkpoint.read_notes(checkpoint.checkpoints_path(path))
    assert [checkpoint.verify(n, key.public_key()).size for n in notes] == [4, 5]
    assert verify_chain_files(path, key.public_key()).signed_size == 5


async def test_a_checkpoint_past_the_end_of_the_log_refuses_to_start(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "n@0.jsonl"
    await _write_chain(path, key, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]))  # the last record removed under the checkpoint
    with pytest.raises(EvidenceChainBroken, match=r"checkpoint 1 covers 4 records but .* has 3"):
        await EvidenceLog(path, "n", signer=key).start()


async def test_a_log_of_another_chain_or_without_chain_ids_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n@0.jsonl"
    legacy = {"record_id": "a" * 32, "node_id": "n", "seq": 1, "prev_hash": "0" * 64, "x": 1}
    path.write_bytes(seal(legacy))
    with pytest.raises(EvidenceChainBroken, match=r"not 'n/0' .*before records carried chain_id"):
        await EvidenceLog(path, "n").start()
    with pytest.raises(EvidenceChainBroken, match="record seq 1 \\(line 1\\): no chain_id"):
        verify_chain_files(path, ec.generate_private_key(ec.SECP256R1()).public_key())


def _tamper_record(path: Path, how: str) -> None:
    backup = path.with_name(path.name + ".orig")
    if how == "undo":
        backup.replace(path)
        return
    backup.write_bytes(path.read_bytes())
    lines = path.read_bytes().splitlines(keepends=True)
    if how == "edit":
        record = json.loads(lines[4])
        record["x"] = 99
        lines[4] = json.dumps(record).encode() + b"\n"
    elif how == "edit-and-rehash":
        # A forger recomputes the record's hash: the next record's link breaks.
        record = json.loads(lines[4])
        record["x"] = 99
        lines[4] = seal(record)
    elif how == "delete":
        del lines[4]
    elif how == "reorder":
        lines[4], lines[5] = lines[5], lines[4]
    elif how == "insert":
        lines.insert(4, lines[3])
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("edit", "record seq 5 \\(line 5\\): hash does not match"),
        ("edit-and-rehash", "record seq 6 \\(line 6\\): prev_hash does not match"),
        ("delete", "record seq 6 \\(line 5\\): expected seq 5"),
        ("reorder", "record seq 6 \\(line 5\\): expected seq 5"),
        ("insert", "record seq 4 \\(line 5\\): expected seq 5"),
    ],
)
async def test_a_tampered_record_is_named(
    how: str, named: str, tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "n@0.jsonl"
    await _write_chain(path, key, 8)
    verify_chain_files(path, key.public_key())
    _tamper_record(path, how)
    with pytest.raises(EvidenceChainBroken, match=named):
        verify_chain_files(path, key.public_key())


async def test_a_rewritten_tail_with_fresh_hashes_is_caught_by_the_checkpoint(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    """Whoever rewrites the whole chain from a record on (hashes and links recomputed) still
    cannot match the signed roots."""
    path = tmp_path / "n@0.jsonl"
    await _write_chain(path, key, 8)
    records = list(read_records(path))
    records[6]["x"] = 99
    for i in range(6, 8):
        records[i]["prev_hash"] = records[i - 1]["hash"]
        records[i]["hash"] = record_hash(records[i])
    path.write_bytes(b"".join(seal(r) for r in records))
    with pytest.raises(EvidenceChainBroken, match="checkpoint 2 \\(size 8\\): root does not match"):
        verify_chain_files(path, key.public_key())


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("size", "checkpoint 2: signature of signalbox-node/n does not verify"),
        ("signature", "checkpoint 2: signature of signalbox-node/n does not verify"),
        ("reorder", "checkpoint 2 \\(size 4\\): smaller than checkpoint 1 \\(size 8\\)"),
        ("resigned-root", "checkpoint 2 \\(size 4\\): root does not match"),
        ("other-key", "checkpoint 2: no signature by signalbox-node/n"),
    ],
)
async def test_a_tampered_checkpoint_is_named(
    how: str, named: str, tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "n@0.jsonl"
    await _write_chain(path, key, 12)
    cps = checkpoint.checkpoints_path(path)
    notes = checkpoint.read_notes(cps)
    if how == "size":
        notes[1] = notes[1].replace(b"\n8\n", b"\n7\n", 1)
    elif how == "signature":
        body, _, sig = notes[1].partition(b"\n\n")
        notes[1] = body + b"\n\n" + sig[:-6] + (b"AAAA" if sig[-6:-2] != b"AAAA" else b"BBBB") + sig[-2:]
    elif how == "reorder":
        notes = [notes[1], notes[0], notes[2]]
    elif how == "resigned-root":
        # Signed by the node key, but over a root that is not the tree's.
        notes[1] = checkpoint.sign(key, "n/0", 4, merkle.root([b"forged"]), 1)
    elif how == "other-key":
        cp = checkpoint.parse(notes[1])
        notes[1] = checkpoint.sign(ec.generate_private_key(ec.SECP256R1()), "n/0", cp.size, cp.root, 1)
    cps.write_bytes(b"".join(n + b"\n" for n in notes))
    with pytest.raises(EvidenceChainBroken, match=named):
        verify_chain_files(path, key.public_key())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalbox", "dataplane", "evidence", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_verifies_a_node_data_dir_and_names_the_first_bad_record(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    key = IdentityFiles.under(data_dir).private_key()
    path = log_path(data_dir, "node-a")
    await _write_chain(path, key, 6, node="node-a")
    ok = _cli("--data-dir", str(data_dir))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "OK node-a/0 records=6 checkpoints=2 signed=6 key=node-key-uncertified\n"

    _tamper_record(path, "edit")
    bad = _cli("--data-dir", str(data_dir))
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"BAD {path}: record seq 5 (line 5): hash does not match")

    # Once certified (what the control plane issues at enrollment or provisioning), the
    # checkpoints verify against the node CA's certificate.
    ca = new_ca()
    files = IdentityFiles.under(data_dir)
    issued = ca.issue_node(NodeCertificateSpec("node-a", "g"), key.public_key(), timedelta(hours=1))
    files.ca.write_bytes(ca.pem)
    files.cert.write_text(issued.pem)
    _tamper_record(path, "undo")
    certified = _cli("--data-dir", str(data_dir))
    assert certified.stdout == "OK node-a/0 records=6 checkpoints=2 signed=6 key=certified\n"
    files.ca.write_bytes(new_ca().pem)
    wrong_ca = _cli("--data-dir", str(data_dir))
    assert wrong_ca.returncode == 1
    assert "not issued by the given node CA" in wrong_ca.stdout

    # A first record that is no JSON object, in a certified node's data dir (where the chain's
    # node is read from it to check the certificate): named, not a traceback.
    files.ca.write_bytes(ca.pem)
    original = path.read_bytes()
    path.write_bytes(b"[1]\n" + original.split(b"\n", 1)[1])
    broken = _cli("--data-dir", str(data_dir))
    assert (broken.returncode, broken.stderr) == (1, "")
    assert broken.stdout == f"BAD {path}: line 1: not a JSON object\n"
    path.write_bytes(original)

    empty = _cli("--data-dir", str(tmp_path / "nothing"))
    assert (empty.returncode, empty.stdout) == (1, "")
    assert "no evidence chains" in empty.stderr


def test_cached_consistency_proofs_equal_the_reference_ones() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(70)]
    subtrees = Subtrees(leaves)
    for old in range(1, 71):
        for new in range(old, 71, 3):
            assert subtrees.consistency_proof(old, new) == merkle.consistency_proof(leaves, old, new), (
                old,
                new,
            )
    with pytest.raises(merkle.ProofError):
        subtrees.consistency_proof(5, 71)
