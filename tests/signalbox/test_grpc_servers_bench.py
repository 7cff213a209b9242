"""Smoke test of ``bench/grpc_servers.py``: every candidate server starts, echoes and is
measured. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grpc_servers.py"


def test_every_grpc_server_candidate_is_measured() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "0.3", "--concurrency", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["server"] for row in rows] == ["aio", "threaded", "threaded-loop", "grpclib"]
    for row in rows:
        assert row["concurrency"] == 4
        assert row["calls_per_s"] > 0
        assert row["server_cpu_us_per_call"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
