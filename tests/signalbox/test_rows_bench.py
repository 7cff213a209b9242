"""Smoke test of ``bench/rows_bench.py`` at a tiny size: it seeds, checks the body against the
full rebuild and prints every figure. No timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "rows_bench.py"


def test_rows_bench_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--tenants", "20", "--keys", "50", "--models", "5", "--policies", "2",
         "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=540,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    out = result.stdout
    for step in (
        r"read, cold \(every row encoded\)\s+[\d.]+ ms",
        r"body of the default group\s+[\d.]+ MB, identical to the rebuild",
        r"read, nothing changed \(median of 2\)\s+[\d.]+ ms",
        r"read after one tenant update\s+[\d.]+ ms",
        r"read after 8 new keys\s+[\d.]+ ms",
        r"cut: default group \(fast path\)\s+[\d.]+ ms",
        r"cut: listed group \(2 tenants\)\s+[\d.]+ ms",
        r"warm read \+ cut default, \+ cut listed\s+[\d.]+ ms, [\d.]+ ms",
    ):
        assert re.search(step, out), f"{step}\n{out}"
