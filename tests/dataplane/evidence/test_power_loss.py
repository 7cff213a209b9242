"""A power cut after a segment roll-over: the full segment lost its unsynced tail while the
new segment (its name, maybe its records) reached the disk. The node starts, continues the
chain from the last whole record, and keeps what it set aside; removal of signed records is
still refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import segments
from dataplane.evidence.log import EvidenceLog
from dataplane.evidence.proofs import verify_chain_files
from dataplane.evidence.records import read_records, verify_chain
from dataplane.evidence.recovery import LOST_DIR

PAD = "x" * 200


def _log(path: Path, key: ec.EllipticCurvePrivateKey | None = None) -> EvidenceLog:
    # Checkpoints only when asked for: a power cut leaves none over unsynced records.
    return EvidenceLog(
        path, "n", signer=key, checkpoint_records=10_000, checkpoint_interval=3600, segment_bytes=1500
    )


async def _chain(path: Path, records: int, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    async with _log(path, key) as log:
        for _ in range(records):
            log.append({"n": log.head.seq + 1, "pad": PAD})


def _lose_tail(segment: Path, whole: int, torn: int) -> int:
    """What a power cut does to a segment's unsynced tail: its last ``whole`` records gone,
    and ``torn`` bytes of the one before them left; the seq of the last whole record."""
    lines = segment.read_bytes().splitlines(keepends=True)
    kept = lines[: len(lines) - whole - (1 if torn else 0)]
    tail = lines[len(kept)][:torn] if torn else b""
    segment.write_bytes(b"".join(kept) + tail)
    return len(kept)


@pytest.mark.parametrize("newest", ["with records", "empty", "never created"])
@pytest.mark.parametrize("torn", [0, 37])
async def test_a_power_cut_after_a_roll_over_is_recovered_from_and_the_chain_continues(
    tmp_path: Path, newest: str, torn: int, caplog: pytest.LogCaptureFixture
) -> None:
    # It refused the start ("torn record but is not the newest segment", or "starts at seq
    # N but the records before end at seq M"): a node out of service after a power cut.
    path = tmp_path / "evidence" / "n@0.jsonl"
    await _chain(path, 14)
    found = segments.all_segments(path)
    full, new = found[-2], found[-1]
    kept = _lose_tail(full.path, whole=2, torn=torn)
    last = full.start - 1 + kept
    lost_bytes = new.path.read_bytes()
    if newest == "empty":
        new.path.write_bytes(b"")
    elif newest == "never created":
        new.path.unlink()

    with caplog.at_level(logging.ERROR, logger="signalbox.dataplane.evidence"):
        async with _log(path) as log:
            assert log.head.seq == last
            for _ in range(5):
                log.append({"n": log.head.seq + 1, "pad": PAD})
    said = f"a power cut after a roll-over lost records {last + 1}..{new.start - 1}"
    # Without the new segment's name on disk the full one is simply the newest: a crash's
    # torn line, cut as ever.
    assert (said in caplog.text) is (newest != "never created")

    assert [r["seq"] for r in read_records(path)] == list(range(1, last + 6))
    assert verify_chain(path).seq == last + 5
    set_aside = sorted((tmp_path / "evidence" / LOST_DIR).iterdir()) if newest == "with records" else []
    if newest == "with records":
        [moved] = set_aside
        assert moved.name.startswith(f"{new.path.name}.")
        assert moved.read_bytes() == lost_bytes  # kept as it was, never deleted


async def test_a_short_segment_whose_records_were_signed_is_refused_and_nothing_is_moved(
    tmp_path: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "evidence" / "n@0.jsonl"
    async with _log(path, key) as log:
        for _ in range(14):
            log.append({"n": log.head.seq + 1, "pad": PAD})
        assert await log.checkpoint()
    full, new = segments.all_segments(path)[-2:]
    _lose_tail(full.path, whole=1, torn=0)
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}

    with pytest.raises(
        EvidenceChainBroken, match="signs 14 records: records were removed after they were on disk"
    ):
        await _log(path, key).start()
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before
    assert new.path.exists()


async def test_a_whole_chain_is_not_cut_and_still_verifies_with_its_checkpoints(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "evidence" / "n@0.jsonl"
    async with _log(path, key) as log:
        for _ in range(14):
            log.append({"n": log.head.seq + 1, "pad": PAD})
        assert await log.checkpoint()
    async with _log(path, key) as log:
        assert log.head.seq == 14
    assert not (path.parent / LOST_DIR).exists()
    assert verify_chain_files(path, key.public_key()).signed_size == 14
