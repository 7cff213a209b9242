"""What the wheel holds: every module, the migrations, and dependencies split by plane."""

from __future__ import annotations

import re
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests import compiled
from tests.packaging.conftest import CONTROLPLANE_EXTRA, ROOT

pytestmark = pytest.mark.timeout(600)


def _source_files() -> set[str]:
    """Wheel paths of every module and data file in the tree (migrations/ is controlplane.migrations)."""
    found: set[str] = set()
    for package in ("signalbox", "controlplane", "dataplane"):
        for path in (ROOT / package).rglob("*"):
            if path.suffix in {".py", ".pyi", ".json"} and "__pycache__" not in path.parts:
                found.add(path.relative_to(ROOT).as_posix())
    for path in (ROOT / "migrations").rglob("*"):
        if path.suffix in {".py", ".mako"} and "__pycache__" not in path.parts:
            found.add("controlplane/" + path.relative_to(ROOT).as_posix())
    return found


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode())
    return metadata.get_all("Requires-Dist") or []


def _project(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group(0).lower()


def test_the_wheel_holds_every_module_and_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())

    assert _source_files() - names == set()
    assert {
        "controlplane/migrations/env.py",
        "controlplane/migrations/script.py.mako",
        "dataplane/policy/policy.schema.json",
    } <= names
    assert not any(n.startswith(("tests/", "migrations/", "bench/")) for n in names)


def test_the_wheel_carries_the_compiled_modules_beside_their_sources(wheel: Path) -> None:
    """Built with mypyc and Cython (setup.py): a platform wheel with an extension per listed module."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())

    assert re.search(r"-cp311-cp311-linux_[a-z0-9_]+\.whl$", wheel.name), wheel.name
    assert any(re.fullmatch(rf"dataplane/{compiled.SHARED}\.[\w.-]+\.so", n) for n in names)
    for path in compiled.listed():
        stem = path.removesuffix(".py")
        assert path in names
        assert any(re.fullmatch(rf"{re.escape(stem)}\.[\w.-]+\.so", n) for n in names), path
    for path in compiled.cython_listed():  # no Python source: its twin is in another module
        assert any(re.fullmatch(rf"{re.escape(path.removesuffix('.pyx'))}\.[\w.-]+\.so", n) for n in names), (
            path
        )
    # Nothing compiled that is not listed: a stale extension would shadow its source.
    stems = {p.removesuffix(".py") for p in compiled.listed()} | {f"dataplane/{compiled.SHARED}"}
    stems |= {p.removesuffix(".pyx") for p in compiled.cython_listed()}
    extra = sorted(n for n in names if n.endswith(".so") and n.split(".", 1)[0] not in stems)
    assert not extra, extra


def test_the_control_plane_dependencies_are_only_in_its_extra(wheel: Path) -> None:
    requirements = _requirements(wheel)
    base = {_project(r) for r in requirements if "extra ==" not in r}
    controlplane = {_project(r) for r in requirements if re.search(r"extra == .controlplane.", r)}
    dev = {_project(r) for r in requirements if re.search(r"extra == .dev.", r)}

    assert base.isdisjoint(CONTROLPLANE_EXTRA)
    assert set(CONTROLPLANE_EXTRA) <= controlplane
    # `make test` installs .[dev]: it must bring the control plane and the code generator.
    assert {"signalbox", "grpcio-tools"} <= dev
    assert any(r.startswith("signalbox[controlplane]") for r in requirements)
