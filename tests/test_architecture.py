"""The import rules of the layout are checked by import-linter, not hoped for.

``make lint`` runs ``lint-imports``; these tests make sure the contracts stay
declared and that they really catch a forbidden import (on a copy of the tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

REQUIRED = {
    "A data-plane node installs and runs alone: no control plane, no database stack",
    "The control plane uses the data plane's compilers and planner, never its front door",
    "The foundation (generated API, settings, errors) imports neither plane",
    "The shell (CLI, up, admin and client CLIs, simulator) is on top: nothing imports it",
    "Data-plane layers: the request path, top to bottom",
    "No import circles between sibling packages or modules",
}


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_contracts_are_declared() -> None:
    contracts = _contracts()
    assert contracts.keys() >= REQUIRED
    node_alone = contracts["A data-plane node installs and runs alone: no control plane, no database stack"]
    assert set(node_alone["forbidden_modules"]) >= {"controlplane", "sqlalchemy", "alembic", "psycopg"}  # type: ignore[arg-type]


def test_the_tree_keeps_every_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for package in ("signalbox", "controlplane", "dataplane"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        (
            "dataplane/_probe.py",
            "import controlplane.errors\n",
            "A data-plane node installs and runs alone",
        ),
        ("dataplane/_probe.py", "import sqlalchemy\n", "A data-plane node installs and runs alone"),
        (
            "controlplane/_probe.py",
            "import dataplane.api.service\n",
            "The control plane uses the data plane's compilers and planner",
        ),
        ("dataplane/routing/_probe.py", "import dataplane.pipeline\n", "Data-plane layers"),
        ("controlplane/_probe.py", "import signalbox.shell.up\n", "The shell"),
        ("dataplane/errors_probe.py", "import dataplane.outcome\n", "No import circles"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(
    tree_copy: Path, module: str, source: str, contract: str
) -> None:
    probe = tree_copy / module
    probe.write_text(source)
    if module == "dataplane/errors_probe.py":
        # outcome imports errors; make errors import the probe, which imports outcome: a circle.
        errors = tree_copy / "dataplane/errors.py"
        original = errors.read_text()
        errors.write_text(original + "\nimport dataplane.errors_probe  # noqa\n")
    try:
        result = _lint(tree_copy)
    finally:
        probe.unlink()
        if module == "dataplane/errors_probe.py":
            errors.write_text(original)
    assert result.returncode != 0
    # The report wraps long names: compare with whitespace folded.
    report = " ".join(result.stdout.split())
    (name,) = (n for n in REQUIRED if n.startswith(contract))
    assert f"{name} BROKEN" in report, result.stdout[-3000:]
