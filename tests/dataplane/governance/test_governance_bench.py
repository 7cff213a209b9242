"""bench/governance_cost.py runs and prints every figure it promises (no timing asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "governance_cost.py"


def test_the_governance_bench_prints_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--requests", "20", "--streams", "1", "--chunks", "50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    # The figures say which build they are of: the suite runs the compiled one (make native).
    build = "pure Python" if os.environ.get("SIGNALBOX_COMPILE") == "0" else "compiled (mypyc)"
    assert f"\ngovernance modules: {build}\n" in "\n" + out, out
    for size in ("none", "1 KB", "4 KB", "32 KB"):
        assert re.search(rf"^\s*{size}\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M), out
    for detector in ("email", "phone", "payment_card", "iban", "credential", "ip_address"):
        assert re.search(rf"^\s*{detector}\s+[\d.]+$", out, re.M), out
    assert re.search(r"^rules on / off: [\d.]+$", out, re.M), out
