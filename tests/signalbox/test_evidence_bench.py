"""Smoke test of ``bench/evidence_bench.py`` at a tiny size: it appends with checkpoints
running, verifies what it wrote and prints every figure. No timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "evidence_bench.py"


def test_evidence_bench_prints_every_figure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--records", "2500", "--checkpoint-records", "1000", "--sync-rounds", "10",
         "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    out = result.stdout
    for figure in (
        r"records: 2500  record bytes: \d+  checkpoints signed: [1-9]",
        r"append rate: [\d,]+ records/s",
        r"append latency: p50 [\d.]+ us  p99 [\d.]+ us",
        r"checkpoint: sign p50 \d+ us  sign\+store\+fsync p50 \d+ us",
        # Checkpoints are signed off the append path: a fast run's appends outpace the signer,
        # which then covers more records at once (the last one, on close, covers them all).
        r"verify_chain_files: [\d,]+ records/s \(2500 records, [1-9] checkpoints",
        r"durability write\(\) \(b: chosen\): p50 [\d.]+ us",
        r"durability write\(\)\+fsync\(\): p50 [\d.]+ us",
    ):
        assert re.search(figure, out), f"{figure}\n{out}"
    assert list(tmp_path.iterdir()) == []  # its temporary directory is gone
