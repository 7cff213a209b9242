"""The package as users get it: one wheel built per session from this tree, installed
into fresh virtualenvs (one per extra) outside the checkout.

pip may fetch dependencies from the package registry; its cache is reused, so a
warm run costs seconds per virtualenv.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What goes into the wheel: the build configuration and the three packages plus migrations/.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "signalbox", "controlplane", "dataplane", "migrations")
CONTROLPLANE_EXTRA = ("sqlalchemy", "alembic", "psycopg", "pgserver")
INSTALL_TIMEOUT = 600


@dataclass(frozen=True)
class Venv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def signalbox(self) -> Path:
        return self.root / "bin" / "signalbox"


def clean_env() -> dict[str, str]:
    """The environment for installed commands: nothing pointing back at the checkout."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SIGNALBOX_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with the clean environment; its output is in the result."""
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def _checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def packaging_dir() -> Iterator[Path]:
    """This session's own directory, outside the checkout and pytest's pruned tmp bases."""
    path = Path(tempfile.mkdtemp(prefix="signalbox-packaging-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built once per test run from a copy of the tree (so the build leaves
    nothing in the checkout). Under xdist every worker has its own session: the first to
    get here builds, under a lock in the run's shared temporary directory, and the others
    take its wheel, since a build compiles the governance modules with mypyc (~100 s of
    CPU)."""
    base = tmp_path_factory.getbasetemp()
    # This run's directory: a worker's base is inside it, a run without xdist's base is it.
    run_dir = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    shared = run_dir / "signalbox-wheel"
    shared.mkdir(exist_ok=True)
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        dist = shared / "dist"
        built = sorted(dist.glob("signalbox-*.whl"))
        if not built:
            _build(shared / "source", dist)
            built = sorted(dist.glob("signalbox-*.whl"))
    (one,) = built
    return one


def _build(source: Path, dist: Path) -> None:
    shutil.rmtree(source, ignore_errors=True)  # what a failed build in another worker left
    # Not the checkout's own compiled extensions (make native): the wheel builds its own.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "*.so", "build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    if (ROOT / "build" / "mypyc-cache").is_dir():
        # make native's build (mypy's analysis cache, mypyc's C, the extensions it linked):
        # the wheel's build then compiles only what changed since, which halves it (~54 s
        # to ~26 s of CPU here). A build of other sources is rebuilt over; an extension of
        # a module no longer listed would ride along, which test_wheel refuses.
        shutil.copytree(ROOT / "build", source / "build", symlinks=True)
    _checked(
        run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            dist,
            source,
            cwd=source.parent,
            timeout=INSTALL_TIMEOUT,
        )
    )


def make_venv(packaging_dir: Path, name: str, requirement: str) -> Venv:
    """A fresh virtualenv with ``requirement`` installed by this interpreter's pip."""
    venv = Venv(packaging_dir / name)
    _checked(run(sys.executable, "-m", "venv", "--without-pip", venv.root, cwd=packaging_dir))
    _checked(
        run(
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv.python,
            "install",
            "--quiet",
            requirement,
            cwd=packaging_dir,
            timeout=INSTALL_TIMEOUT,
        )
    )
    return venv


@pytest.fixture(scope="session")
def node_venv(packaging_dir: Path, wheel: Path) -> Venv:
    """``pip install signalbox``: no extra."""
    return make_venv(packaging_dir, "node-venv", str(wheel))


@pytest.fixture(scope="session")
def controlplane_venv(packaging_dir: Path, wheel: Path) -> Venv:
    """``pip install 'signalbox[controlplane]'``."""
    return make_venv(packaging_dir, "controlplane-venv", f"signalbox[controlplane] @ {wheel.as_uri()}")
