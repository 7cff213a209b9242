"""Smoke test of ``bench/mtls_cost.py`` at a tiny size: a real node per mode (plaintext,
gRPC's TLS, mTLS through the TLS front) serves the bench's calls and each row is printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "mtls_cost.py"


def test_mtls_cost_bench_prints_a_row_per_mode() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--requests",
            "40",
            "--rounds",
            "1",
            "--concurrency",
            "2",
            "--warmup",
            "5",
            "--no-pin",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    for mode in ("plaintext", "tls", "mtls"):
        assert re.search(rf"^ +1 {mode} +\d+ +[\d.]+ +[\d.]+ +\d+$", result.stdout, re.M), result.stdout
