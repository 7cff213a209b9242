"""Segmented chains: roll-over, verification across segments, a chain written as one file
read as the first segment, recovery of a torn line in the newest segment, and pruning behind
a base (the tree, the next checkpoints and the verifier continue from it)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import merkle, segments
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.proofs import inclusion, verify_chain_files
from dataplane.evidence.records import read_records, verify_chain
from dataplane.evidence.shipper import prune
from dataplane.identity import IdentityFiles
from tests.dataplane.evidence.test_crash import NODE, _load, pinned_node_process
from tests.helpers import eventually

PAD = "x" * 200


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def _append(log: EvidenceLog, count: int, *, every: int = 0) -> None:
    for _ in range(count):
        seq = log.head.seq + 1
        log.append({"n": seq, "pad": PAD})
        if every and seq % every == 0:
            await eventually(lambda s=seq: log.signed_size == s, message=f"checkpoint at {seq}")


def _append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _log(path: Path, key: ec.EllipticCurvePrivateKey, *, segment_bytes: int = 1500) -> EvidenceLog:
    return EvidenceLog(
        path, "n", signer=key, checkpoint_records=5, checkpoint_interval=60, segment_bytes=segment_bytes
    )


async def test_segments_roll_over_and_a_chain_spanning_them_verifies(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "evidence" / "n@0.jsonl"
    async with _log(path, key) as log:
        await _append(log, 23, every=5)
    found = segments.all_segments(path)
    assert len(found) >= 4
    assert found[0].path == path
    assert found[1].path.name == f"n@0.jsonl.{found[1].start:020d}"
    for segment in found:  # whole records only; none past the bound (each record < the bound)
        size = segment.path.stat().st_size
        assert 0 < size <= 1500
        assert json.loads(segment.path.read_bytes().splitlines()[0])["seq"] == segment.start
    assert [r["seq"] for r in read_records(path)] == list(range(1, 24))
    report = verify_chain_files(path, key.public_key())
    assert (report.records, report.signed_size, report.pruned) == (23, 23, 0)
    proof = inclusion(path, seq=17)
    assert proof.verify(key.public_key()).size == 23

    # Restarted: writing continues in the newest segment, then rolls over again.
    async with _log(path, key) as log:
        assert log.head.seq == 23
        await _append(log, 10)
    assert verify_chain(path).seq == 33
    assert verify_chain_files(path, key.public_key()).signed_size == 33

    # Tampering in a later segment is named with that segment's file and line.
    third = segments.all_segments(path)[2]
    lines = third.path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["n"] = -1
    lines[1] = json.dumps(record).encode() + b"\n"
    third.path.write_bytes(b"".join(lines))
    with pytest.raises(
        EvidenceChainBroken,
        match=rf"record seq {third.start + 1} \(line 2 of {third.path.name}\): hash does not",
    ):
        verify_chain_files(path, key.public_key())


async def test_a_single_file_chain_is_the_first_segment(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "evidence" / "n@0.jsonl"
    async with _log(path, key, segment_bytes=64 * 1024 * 1024) as log:  # as written before segments
        await _append(log, 6)
    assert segments.all_segments(path) == [segments.Segment(1, path)]
    async with _log(path, key) as log:
        await _append(log, 12)
    assert len(segments.all_segments(path)) > 2
    assert verify_chain_files(path, key.public_key()).records == 18


async def test_a_torn_line_in_the_newest_segment_is_cut_at_start(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "evidence" / "n@0.jsonl"
    async with _log(path, key) as log:
        await _append(log, 14)
    newest = segments.all_segments(path)[-1]
    kept = newest.path.stat().st_size
    _append_bytes(newest.path, b'{"record_id":"torn","seq":15,"pad":"xx')
    async with _log(path, key) as log:
        assert log.head.seq == 14
        assert newest.path.stat().st_size == kept
        await _append(log, 4)
    assert verify_chain_files(path, key.public_key()).records == 18

    # A torn line anywhere but the newest segment is not a crash the log can explain.
    older = segments.all_segments(path)[-2]
    _append_bytes(older.path, b'{"torn')
    with pytest.raises(EvidenceChainBroken, match="torn record but is not the newest segment"):
        await _log(path, key).start()


async def test_pruning_behind_a_base_keeps_the_tree_checkpoints_and_verifier_going(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "evidence" / "n@0.jsonl"
    async with _log(path, key) as log:
        await _append(log, 20, every=5)
        full_root = log._tree.root()
    before = segments.all_segments(path)
    # Acknowledged up to the middle of the third segment: the first two go, the rest stay.
    acked = before[2].start + 1
    sizes = [s.path.stat().st_size for s in before]
    assert prune(path, "n/0", acked) == sizes[0] + sizes[1]
    assert segments.all_segments(path) == before[2:]
    base = segments.read_base(path)
    assert base is not None
    assert base.seq == before[2].start - 1
    assert segments.base_path(path).stat().st_mode & 0o777 == 0o600
    # The compact range continues to the same tree as all the leaves.
    tree = base.tree()
    for record in read_records(path):
        tree.append(bytes.fromhex(record["hash"]))
    assert tree.root() == full_root

    report = verify_chain_files(path, key.public_key())
    assert (report.pruned, report.records, report.signed_size) == (base.seq, 20 - base.seq, 20)
    with pytest.raises(ValueError, match="were pruned"):
        inclusion(path, seq=20)

    # Restarted after pruning: new records and checkpoints continue the same tree.
    async with _log(path, key) as log:
        assert log.head.seq == 20
        await _append(log, 7, every=5)
    report = verify_chain_files(path, key.public_key())
    assert (report.records + report.pruned, report.signed_size) == (27, 27)
    assert verify_chain(path).seq == 27

    # A base that lies about the pruned records does not verify against signed checkpoints.
    forged = segments.Base(base.chain_id, base.seq, base.hash, (merkle.EMPTY_ROOT, *base.frontier[1:]))
    good = segments.base_path(path).read_bytes()
    segments.write_base(path, forged)
    with pytest.raises(EvidenceChainBroken, match=r"checkpoint \d+ \(size \d+\): root does not match"):
        verify_chain_files(path, key.public_key())
    segments.base_path(path).write_bytes(good)

    # A crash between writing the base and deleting: the leftover is skipped, then deleted.
    nothing = prune(path, "n/0", 0)
    assert nothing == 0
    first_live = segments.all_segments(path)[0]
    assert first_live.start == base.seq + 1
    leftover = segments.segment_path(path, 1)
    leftover.write_bytes(b'{"seq":1}\n')
    assert verify_chain_files(path, key.public_key()).pruned == base.seq
    async with _log(path, key):
        pass
    assert not leftover.exists()


async def test_a_hostile_base_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "evidence" / "n@0.jsonl"
    path.parent.mkdir()
    for body, named in [
        (b"[]", "not a JSON object"),
        (b'{"chain_id":"n/0","seq":0,"hash":"' + b"0" * 64 + b'","frontier":[]}', "seq is not a positive"),
        (
            b'{"chain_id":"n/0","seq":3,"hash":"' + b"0" * 64 + b'","frontier":[]}',
            "frontier: a tree of size 3",
        ),
        (b'{"chain_id":"n/0","seq":1,"hash":"zz","frontier":[]}', "hash is not 64"),
        (b"{" + b" " * 20000 + b"}", "larger than"),
    ]:
        segments.base_path(path).write_bytes(body)
        with pytest.raises(EvidenceChainBroken, match=named):
            segments.read_base(path)


async def test_a_sigkilled_node_restarts_with_a_torn_line_in_its_newest_segment(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    node, data_dir = pinned_node_process(
        tmp_path,
        trust_key,
        signing_key,
        simulator,
        "--evidence-segment-bytes",
        "8192",
        "--evidence-checkpoint-ms",
        "100",
    )
    path = log_path(data_dir, NODE)
    answered: dict[str, str] = {}
    try:
        address = await node.start()
        stop = asyncio.Event()
        callers = [asyncio.get_running_loop().create_task(_load(address, answered, stop)) for _ in range(4)]
        await eventually(
            lambda: len(answered) >= 100 and len(segments.all_segments(path)) >= 3,
            timeout=60,
            message="answers over several segments",
        )
        await node.kill()  # SIGKILL with requests in flight
        await asyncio.gather(*callers)
        # A write cut in the middle of a record (SIGKILL between two write() calls never
        # tears one; a power loss can): the newest segment ends in half a line.
        newest = segments.all_segments(path)[-1]
        _append_bytes(newest.path, b'{"record_id":"0123","chain_id":"node-crash/0","seq":')
        killed_with = len(answered)

        address = await node.start()
        after = asyncio.get_running_loop().create_task(_load(address, answered, asyncio.Event()))
        await eventually(lambda: len(answered) >= killed_with + 20, message="answers after the restart")
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        await after
        assert await node.wait() == 0
    finally:
        await node.kill()

    assert any("cutting a torn last record" in line for line in node.lines)
    records = {r["record_id"]: r for r in read_records(path)}
    assert not [rid for rid in answered if rid not in records]
    key = IdentityFiles.under(data_dir).private_key().public_key()
    report = verify_chain_files(path, key)
    assert report.records == len(records) == verify_chain(path).seq
    assert report.signed_size == report.records
    assert len(segments.all_segments(path)) >= 3


def test_a_line_reads_as_json_loads_reads_it_even_where_orjson_refuses() -> None:
    """Chains are read with orjson for speed; what it refuses falls back to json.loads."""
    import math

    from dataplane.evidence.segments import json_object

    assert json_object(b'{"seq":1,"x":[1,2]}\n', "line 1") == {"seq": 1, "x": [1, 2]}
    older = json_object(b'{"x":NaN,"s":"\\ud800"}', "line 2")
    assert math.isnan(older["x"])
    assert older["s"] == "\ud800"
    # The one value that reads differently: beyond 64 bits, a float (no chain check reads one).
    assert json_object(b'{"big":123456789012345678901234567890}', "line 2")["big"] == 1.2345678901234568e29
    for bad, why in ((b'{"x":', "line 3: not JSON"), (b"[1]", "line 3: not a JSON object")):
        with pytest.raises(EvidenceChainBroken, match=why):
            json_object(bad, "line 3")


async def test_verify_chain_names_a_line_that_is_not_json_instead_of_raising_a_decode_error(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "evidence" / "n@0.jsonl"
    async with _log(path, key) as log:
        await _append(log, 3)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"seq": 2, torn\n' + lines[2])
    with pytest.raises(EvidenceChainBroken, match="line 2"):
        verify_chain(path)
