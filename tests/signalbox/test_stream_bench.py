"""Smoke test of the streaming benchmark: it builds its stack, streams both ways and prints the
figures. No timing is asserted; the figures belong in reports, not in pass/fail."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "stream_bench.py"
NUMBER = r"-?[\d.]+"


def test_stream_bench_prints_ttft_and_chunk_rates(stack_dir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--streams",
            "10",
            "--warmup",
            "2",
            "--concurrency",
            "1,2",
            "--words",
            "5",
            "--data-dir",
            str(stack_dir),
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )

    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "8 text chunks per answer" in out, out
    assert re.search(
        r"p50 TTFT ms\s+p99 TTFT ms\s+added p50 ms\s+added p99 ms\s+chunks/s\s+messages/s\s+node CPU %\s+client CPU %",
        out,
    )
    for concurrency in (1, 2):
        direct = re.search(
            rf"^\s+{concurrency}\s+direct\s+10\s+0\s+({NUMBER})\s+({NUMBER})\s+(\d+)\s+\d+\s+\d+\s+\d+$",
            out,
            re.M,
        )
        doors = [
            re.search(
                rf"^\s+{concurrency}\s+{door}\s+10\s+0\s+({NUMBER})\s+({NUMBER})\s+{NUMBER}\s+{NUMBER}\s+(\d+)\s+\d+\s+\d+\s+\d+$",
                out,
                re.M,
            )
            for door in ("grpc", "http")
        ]
        assert direct is not None, out
        assert None not in doors, out
        for row in (direct, *doors):
            assert row is not None
            p50, p99, chunk_rate = float(row.group(1)), float(row.group(2)), int(row.group(3))
            assert 0 < p50 <= p99, out
            assert chunk_rate > 0, out
