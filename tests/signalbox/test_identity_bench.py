"""Smoke test of ``bench/identity_bench.py`` at a tiny size: every method is timed and printed
(the API key target is checked by the bench itself; its exit status says whether it held)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "identity_bench.py"


def test_identity_bench_prints_every_method() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--keys", "2000", "--calls", "300"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    out = result.stdout
    assert re.search(
        r"^2000 API keys \(\+1000 of the earlier format\), 101 mTLS mappings, 1 JWT issuer", out, re.M
    ), out
    methods = ("api key", r"api key \(sha256\)", "api key unknown id", "api key wrong secret", "jwt ES256")
    first_sight = (r"jwt ES256 \(first sight\)", r"jwt RS256 \(first sight\)", r"mtls \(first sight\)")
    for method in (*methods, "jwt RS256", "mtls", *first_sight):
        assert re.search(rf"^{method} +[\d.]+ +[\d.]+", out, re.M), f"{method}\n{out}"
    assert "target < 20 us: PASS" in out
