"""Smoke test of ``bench/identity_bench.py`` at a tiny size: every method is timed and printed
(the API key target is checked by the bench itself; its exit status says whether it held)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "identity_bench.py"


def _run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--keys", "2000", "--calls", "300", *args],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    return result.stdout


def test_identity_bench_prints_every_method() -> None:
    out = _run()
    assert re.search(
        r"^2000 API keys \(\+1000 of the earlier format\) under 1 hash key version\(s\), 101 mTLS mappings, "
        r"1 JWT issuer",
        out,
        re.M,
    ), out
    methods = ("api key", r"api key \(sha256\)", "api key unknown id", "api key wrong secret", "jwt ES256")
    first_sight = (r"jwt ES256 \(first sight\)", r"jwt RS256 \(first sight\)", r"mtls \(first sight\)")
    for method in (*methods, "jwt RS256", "mtls", *first_sight):
        assert re.search(rf"^{method} +[\d.]+ +[\d.]+", out, re.M), f"{method}\n{out}"
    assert "target < 20 us: PASS" in out
    assert "newest version" not in out


def test_identity_bench_with_two_hash_key_versions_times_a_key_of_each() -> None:
    out = _run("--hash-key-versions", "2")
    assert "under 2 hash key version(s)" in out
    for method in ("api key", r"api key \(newest version\)", "api key unknown id", "api key wrong secret"):
        assert re.search(rf"^{method} +[\d.]+ +[\d.]+", out, re.M), f"{method}\n{out}"
    assert "target < 20 us: PASS" in out
