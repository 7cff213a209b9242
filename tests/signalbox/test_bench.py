"""Smoke test of the benchmark: it builds its stack, drives both paths and prints the figures.
No timing is asserted; the figures belong in reports, not in pass/fail."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "infer_load.py"


CPU_FIGURE = (
    r"(?:[\d.]+ ms \(one core sustains at most \d+ req/s\)"
    r"|under [\d.]+ ms \(less than one clock tick over \d+ requests: measure more of them\))"
)
"""The node's CPU per request as the bench prints it: a figure, or, for a tiny run that used
less than one of the kernel's 10 ms CPU ticks, a bound."""


def _bench(stack_dir: Path, *args: str) -> str:
    """A tiny run of the bench with its stack in ``stack_dir``; what it printed."""
    result = subprocess.run(
        [sys.executable, str(BENCH), "--warmup", "2", "--data-dir", str(stack_dir), *args],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_bench_prints_latency_rate_and_rss(stack_dir: Path) -> None:
    out = _bench(stack_dir, "--requests", "20", "--concurrency", "1,2", "--http")
    assert re.search(r"req/s\s+p50 ms\s+p99 ms\s+added p50 ms\s+node peak RSS MiB\s+node CPU %", out), out
    for concurrency in (1, 2):
        assert re.search(rf"^\s+{concurrency}\s+direct\s+20\s+0\s+\d+", out, re.M), out
        for path, through in (("signalbox", ""), ("http", " \\(http\\)")):
            node = re.search(
                rf"^\s+{concurrency}\s+{path}\s+20\s+0\s+\d+\s+[\d.]+\s+[\d.]+\s+-?[\d.]+\s+([\d.]+)\s+\d+\s+\d+$",
                out,
                re.M,
            )
            assert node is not None, out
            assert float(node.group(1)) > 0  # the node's RSS was sampled
            assert re.search(
                rf"^node CPU per request at concurrency {concurrency}{through}: {CPU_FIGURE}$", out, re.M
            ), out
    assert "data plane peak RSS over the whole run:" in out


def test_the_grpc_floor_answers_without_the_pipeline(stack_dir: Path) -> None:
    """``--grpc-floor``: the node's Infer answers at once, so its requests leave no evidence
    (the real path writes one record each: the other test's run)."""
    out = _bench(stack_dir, "--requests", "10", "--concurrency", "1", "--grpc-floor")
    assert re.search(r"^\s+1\s+grpc-floor\s+10\s+0\s+\d+", out, re.M), out
    assert re.search(rf"^node CPU per request at concurrency 1 \(grpc-floor\): {CPU_FIGURE}$", out, re.M), out
    records = [p for p in (stack_dir / "node" / "evidence").glob("*.jsonl") if p.read_bytes().strip()]
    assert records == [], "the floor's requests went through the pipeline"


def test_profile_samples_the_node_on_each_of_its_paths(stack_dir: Path, tmp_path: Path) -> None:
    """``--profile``: py-spy's raw stacks of the node while it serves each path, each file
    holding that door's own frames (the one in the node, not the load generator's)."""
    profile = tmp_path / "node.raw"
    out = _bench(stack_dir, "--duration", "3", "--concurrency", "1", "--http", "--profile", str(profile))
    doors = {"signalbox": "InferService.Infer (dataplane/api/service.py", "http": "OpenAIFrontDoor."}
    for path, frame in doors.items():
        written = tmp_path / f"node.{path}.c1.raw"
        assert f"py-spy on the node ({path}, concurrency 1) -> {written}" in out, out
        stacks = written.read_text()
        assert frame in stacks, stacks[:2000]
        assert "infer_load.py" not in stacks  # the node's stacks, not the bench's
    assert not (tmp_path / "node.direct.c1.raw").exists()


def test_profile_needs_a_duration(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--profile", str(tmp_path / "p.raw")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--profile needs --duration" in result.stderr


def test_a_run_shorter_than_a_cpu_tick_prints_a_bound_not_a_figure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The kernel counts CPU in clock ticks: a node that used none over a short run gets an
    upper bound, never ``0.000 ms`` and ``inf req/s``."""
    spec = importlib.util.spec_from_file_location("infer_load", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["infer_load"] = bench  # dataclasses look their module up while building
    try:
        spec.loader.exec_module(bench)
        direct = bench.Result("direct", 2, 20, 0, 0.01, (0.5,) * 20)
        idle = bench.Result("http", 2, 20, 0, 0.01, (0.5,) * 20, node_cpu_percent=0.0)
        busy = bench.Result("signalbox", 2, 20, 0, 0.01, (0.5,) * 20, node_cpu_percent=100.0)
        bench.print_table([(direct, busy, idle)])
    finally:
        del sys.modules["infer_load"]
    out = capsys.readouterr().out
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    assert (
        f"node CPU per request at concurrency 2 (http): under {tick_ms / 20:.3f} ms "
        "(less than one clock tick over 20 requests: measure more of them)"
    ) in out
    assert "node CPU per request at concurrency 2: 0.500 ms (one core sustains at most 2000 req/s)" in out
    assert "inf" not in out
