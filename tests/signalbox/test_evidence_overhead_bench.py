"""``bench/evidence_overhead.py`` compares a node with evidence on against one "built" with it
off; the off variant must really skip the evidence step (and only with its switch set), or
the figures it prints mean nothing. Starting full stacks is the benchmark's job, not CI's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
PROBE = (
    "from dataplane.pipeline import steps\n"
    "class T:\n    recorded = None\n"
    "print(steps.Pipeline._record.__name__, steps.Pipeline._record(None, T(), None) if "
    "steps.Pipeline._record.__name__ == '_no_record' else '')\n"
)


def _probe(extra_env: dict[str, str]) -> str:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from bench.evidence_overhead import OFF_ENV
    finally:
        sys.path.remove(str(BENCH.parent))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": OFF_ENV["PYTHONPATH"], **extra_env}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_off_variant_skips_the_evidence_step_only_when_switched_on() -> None:
    assert _probe({"SIGNALBOX_BENCH_EVIDENCE_OFF": "1"}) == "_no_record evidence-off"
    assert _probe({}) == "_record"


def test_the_write_variant_sets_the_nodes_ship_interval() -> None:
    """``write`` ships only full batches: its variable must be the one --evidence-ship-ms reads."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        from bench.evidence_overhead import WRITE_ENV
    finally:
        sys.path.remove(str(BENCH.parent))
    readme = (BENCH.parent / "README.md").read_text()
    (name,) = WRITE_ENV
    assert f"| `dataplane serve` | `--evidence-ship-ms` | `{name}` |" in readme
    assert int(WRITE_ENV[name]) >= 3_600_000
