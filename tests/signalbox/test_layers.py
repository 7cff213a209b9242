"""The layers: the shell sits on top; the foundation and both planes never import it,
and the data plane never imports the control plane."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules_imported(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth (lazy imports in functions too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def sources(*packages: str, skip: tuple[str, ...] = ()) -> list[Path]:
    found = [p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in found if not any(p.is_relative_to(ROOT / s) for s in skip)]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# signalbox/__main__.py is the shell's entry point (``python -m signalbox``), not foundation.
BELOW_THE_SHELL = sources(
    "signalbox", "controlplane", "dataplane", skip=("signalbox/shell", "signalbox/__main__.py")
)


@pytest.mark.parametrize("path", BELOW_THE_SHELL, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_below_the_shell_imports_it(path: Path) -> None:
    bad = sorted({m for m in modules_imported(path) if _within(m, "signalbox.shell")})

    assert not bad, f"{path.relative_to(ROOT)} imports the shell: {bad}"


@pytest.mark.parametrize("path", sources("dataplane"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_data_plane_never_imports_the_control_plane(path: Path) -> None:
    bad = sorted({m for m in modules_imported(path) if _within(m, "controlplane")})

    assert not bad, f"{path.relative_to(ROOT)} imports the control plane: {bad}"


def test_the_checks_see_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from signalbox import shell\n\ndef f():\n    import controlplane.cli\n")

    assert {"signalbox.shell", "controlplane.cli"} <= set(modules_imported(probe))
    assert "signalbox.shell.cli" in set(modules_imported(ROOT / "signalbox" / "__main__.py"))
    assert BELOW_THE_SHELL
    assert all("shell" not in p.relative_to(ROOT).parts for p in BELOW_THE_SHELL)
