"""Smoke test of the evidence ingest benchmark: it enrolls its nodes, ships every record of
their logs (every segment, in order) to a real control plane and prints the figures. No
timing is asserted; the figures belong in reports, not in pass/fail."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "evidence_ingest.py"


def test_evidence_ingest_bench_ships_every_segment_and_prints_the_rates() -> None:
    # ~1,160 bytes a record: 200 KB segments give each node's 600 records four segments.
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--nodes",
            "2",
            "--records",
            "600",
            "--batch",
            "250",
            "--segment-bytes",
            "200000",
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )

    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert re.search(r"^records/s verified, committed, acknowledged\s+[\d,]+$", out, re.M), out
    assert re.search(r"^records\s+1,200 in [\d.]+ s$", out, re.M), out
    assert re.search(r"^batch ACK latency\s+p50 [\d.]+ ms\s+p99 [\d.]+ ms", out, re.M), out
    for name in ("control plane \\(process \\+ workers\\)", "PostgreSQL \\(server \\+ backends\\)"):
        assert re.search(rf"^\s+{name}\s+[\d.]+ us\s+[\d,]+ records/s per core$", out, re.M), out
