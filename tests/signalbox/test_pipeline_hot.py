"""``bench/pipeline_hot.py`` prints its figure only for requests that did the pipeline's work
(one evidence record each), and refuses nonsense arguments."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "pipeline_hot.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_short_run_prints_the_pipelines_cpu_per_request() -> None:
    result = _run("--requests", "50", "--rounds", "2", "--warmup", "10")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"pipeline us/request over 2 rounds of 50: min \d+\.\d  median \d+\.\d  max \d+\.\d", line
    ), line


def test_a_run_with_gaps_prints_the_cpu_each_request_took() -> None:
    result = _run("--requests", "20", "--rounds", "1", "--warmup", "5", "--gap-ms", "2")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"thread CPU us/request after 2 ms idle: median \d+\.\d  p90 \d+\.\d", line), line


def test_the_profile_is_written_where_asked(tmp_path: Path) -> None:
    stats = tmp_path / "hot.prof"
    result = _run("--requests", "20", "--rounds", "1", "--warmup", "0", "--cprofile", str(stats))
    assert result.returncode == 0, result.stderr
    assert stats.stat().st_size > 0


def test_a_run_of_no_requests_is_refused() -> None:
    result = _run("--requests", "0")
    assert result.returncode == 2
    assert "--requests and --rounds must be at least 1" in result.stderr


def test_a_negative_gap_is_refused() -> None:
    result = _run("--gap-ms", "-1")
    assert result.returncode == 2
    assert "--gap-ms 0 to 10000" in result.stderr
