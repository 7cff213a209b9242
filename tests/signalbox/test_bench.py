"""Smoke test of the benchmark: it builds its stack, drives both paths and prints the figures.
No timing is asserted; the figures belong in reports, not in pass/fail."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "infer_load.py"


def test_bench_prints_latency_rate_and_rss(stack_dir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--requests",
            "20",
            "--warmup",
            "2",
            "--concurrency",
            "1,2",
            "--data-dir",
            str(stack_dir),
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )

    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert re.search(r"req/s\s+p50 ms\s+p99 ms\s+added p50 ms\s+node peak RSS MiB\s+node CPU %", out), out
    for concurrency in (1, 2):
        assert re.search(rf"^\s+{concurrency}\s+direct\s+20\s+0\s+\d+", out, re.M), out
        node = re.search(
            rf"^\s+{concurrency}\s+signalbox\s+20\s+0\s+\d+\s+[\d.]+\s+[\d.]+\s+-?[\d.]+\s+([\d.]+)\s+\d+\s+\d+$",
            out,
            re.M,
        )
        assert node is not None, out
        assert float(node.group(1)) > 0  # the node's RSS was sampled
        assert re.search(
            rf"^node CPU per request at concurrency {concurrency}: [\d.]+ ms \(one core sustains at most \d+ req/s\)$",
            out,
            re.M,
        ), out
    assert "data plane peak RSS over the whole run:" in out
