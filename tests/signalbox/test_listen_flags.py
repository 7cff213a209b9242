"""A malformed address or simulator behaviour on the command line is a one-line error with
exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    # "²".isdigit() is True but int("²") fails: a port must be ASCII digits.
    "dataplane http-listen": (
        ["dataplane", "serve", "--http-listen", "127.0.0.1:²"],
        "--http-listen: '127.0.0.1:²' is not HOST:PORT",
    ),
    "dataplane metrics-listen": (
        ["dataplane", "serve", "--metrics-listen", "127.0.0.1:²"],
        "--metrics-listen: '127.0.0.1:²' is not HOST:PORT",
    ),
    "controlplane metrics-listen": (
        ["controlplane", "serve", "--metrics-listen", "127.0.0.1:²"],
        "--metrics-listen: '127.0.0.1:²' is not HOST:PORT",
    ),
    "simulator listen": (
        ["simulator", "serve", "--listen", "127.0.0.1:²"],
        "--listen: '127.0.0.1:²': expected HOST:PORT",
    ),
    "simulator listen without a port": (
        ["simulator", "serve", "--listen", "localhost"],
        "--listen: 'localhost'",
    ),
    "simulator behaviour not JSON": (
        ["simulator", "serve", "--listen", "127.0.0.1:0", "--behaviour", "{"],
        "--behaviour: Expecting property name",
    ),
    "simulator behaviour not an object": (
        ["simulator", "serve", "--listen", "127.0.0.1:0", "--behaviour", "[1]"],
        "--behaviour: expected a JSON object of model: behaviour",
    ),
    "simulator behaviour of a model not an object": (
        ["simulator", "serve", "--listen", "127.0.0.1:0", "--behaviour", '{"m": 5}'],
        "--behaviour: m: expected a JSON object",
    ),
    "simulator behaviour with an unknown field": (
        ["simulator", "serve", "--listen", "127.0.0.1:0", "--behaviour", '{"m": {"bogus": 1}}'],
        "--behaviour: unknown behaviour fields: bogus",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_flag_is_one_line_and_status_2(case: str, tmp_path: Path) -> None:
    args, message = CASES[case]
    if args[0] != "simulator":
        args = [*args, "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(
        [sys.executable, "-m", "signalbox", *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()
