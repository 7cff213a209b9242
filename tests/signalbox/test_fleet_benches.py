"""Smoke tests of the fleet benchmarks at a tiny size: each builds its control plane, enrolls
and drives its nodes over mutual TLS and prints its figures. No timing is asserted; the
figures belong in reports (bench/README.md), not in pass/fail."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

BENCH = Path(__file__).resolve().parents[2] / "bench"
TINY = ["--tenants", "20", "--keys", "50", "--models", "5", "--policies", "2"]


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=540
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    return result.stdout


def test_propagation_bench_enrolls_its_nodes_and_prints_percentiles() -> None:
    out = _run("propagation.py", "--nodes", "4", "--changes", "2", *TINY)
    assert re.search(r"^enrolled\s+4 node certificates$", out, re.M), out
    assert re.search(r"^connected and ACKed\s+4 simulated nodes$", out, re.M), out
    for label in ("small snapshot", "50-key snapshot"):
        assert re.search(
            rf"^{label}: 4 nodes x 2 changes\s+p50 \d+ ms\s+p99 \d+ ms\s+max \d+ ms", out, re.M
        ), out


def test_snapshot_scale_bench_prints_every_step() -> None:
    out = _run(
        "snapshot_scale.py", *TINY, "--changes", "2", "--clients", "2",
        "--key-creations", "2", "--import-tenants", "5", "--import-keys", "10", "--explains", "3",
    )  # fmt: skip
    for step in (
        r"rows read, warm \(after a one-tenant change\)\s+[\d.]+ ms",
        r"compile by difference\s+[\d.]+ ms",
        r"delta to the previous version\s+\d+ bytes, 1 splices",
        r"node, whole: verify / layout / compile / routes\s+[\d.]+ ms",
        r"node, delta: rebuild / verify / compile\s+[\d.]+ ms",
        r"admin change, one at a time \(n=2\)\s+p50 [\d.]+ ms\s+p99 [\d.]+ ms",
        r"admin changes, 2 clients x 2\s+[\d.]+ changes/s",
        r"route explain, 3 calls\s+p50\s+[\d.]+ ms\s+p99\s+[\d.]+ ms",
        r"import 5 tenants \+ 10 keys .* 10 secrets",
    ):
        assert re.search(step, out), f"{step}\n{out}"


def test_propagation_bench_reports_one_nodes_check_of_a_delta() -> None:
    out = _run("propagation.py", "--nodes", "2", "--changes", "1", "--check-each", *TINY)
    assert re.search(r"^every node took the 50-key config\s+[\d.]+ s$", out, re.M), out
    assert re.search(r"^one node's check of a delta\s+\d+ B delta: rebuild [\d.]+ ms", out, re.M), out


def test_apply_under_load_bench_compares_quiet_and_busy_runs_in_pairs() -> None:
    out = _run(
        "apply_under_load.py", "--tenants", "20", "--keys", "50", "--duration", "1", "--rounds", "2",
        "--warmup", "20", "--change-every", "0.3", "--no-pin",
    )  # fmt: skip
    assert re.search(r"control plane and its PostgreSQL at nice 19 \(\d+ threads\)", out), out
    for round_ in (1, 2):
        assert re.search(rf"^round {round_}: no apply\s+\d+ req\s+0 err", out, re.M), out
        assert re.search(
            rf"^round {round_}: while snapshots apply\s+\d+ req\s+0 err.*[1-9]\d* changes", out, re.M
        ), out
    assert re.search(r"^added p99 per round: -?[\d.]+, -?[\d.]+ ms; median -?[\d.]+ ms$", out, re.M), out
