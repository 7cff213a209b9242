"""The modules compiled with mypyc (pyproject.toml, ``[tool.signalbox] compiled``) in a checkout.

``make native`` compiles them in place: each listed ``x.py`` gets an ``x.<abi>.so`` beside it,
and the code of all of them is in one shared library, ``dataplane/_native__mypyc.<abi>.so``.
Python imports an extension before a source of the same name, so an extension older than
its source runs the old code: ``stale`` says so before the suite runs (tests/conftest.py).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = "_native__mypyc"


def listed(root: Path = ROOT) -> list[str]:
    """The compiled modules' source paths, relative to ``root``."""
    with (root / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["signalbox"]["compiled"])


def cython_listed(root: Path = ROOT) -> list[str]:
    """The Cython modules' source paths (``[tool.signalbox] cython``), relative to ``root``."""
    with (root / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["signalbox"].get("cython", []))


def module_name(path: str) -> str:
    """``dataplane/governance/detect.py`` -> ``dataplane.governance.detect`` (a ``.pyx`` alike)."""
    return path.removesuffix(".py").removesuffix(".pyx").replace("/", ".")


def stale(root: Path = ROOT) -> list[str]:
    """Why the extensions in ``root`` do not match their sources; empty when they do, or when
    there are none (a pure-Python checkout)."""
    sources = {root / path for path in listed(root)}
    written = {root / path for path in cython_listed(root)}
    shared = sorted((root / "dataplane").glob(f"{SHARED}*.so"))
    extensions = [p for p in sorted((root / "dataplane").rglob("*.so")) if not p.name.startswith(SHARED)]
    problems = []
    for extension in extensions:
        source = extension.with_name(extension.name.split(".", 1)[0] + ".py")
        if source not in sources and source.with_suffix(".pyx") not in written:
            problems.append(f"{extension.relative_to(root)} is compiled but its module is not listed")
    if extensions and not shared:
        problems.append(f"dataplane/{SHARED}*.so is missing")
    if shared:
        built = min(p.stat().st_mtime for p in shared)
        for source in sorted(sources):
            if source.stat().st_mtime > built:
                problems.append(f"{source.relative_to(root)} changed after it was compiled")
            if not list(source.parent.glob(source.stem + ".*.so")):
                problems.append(f"{source.relative_to(root)} is listed but not compiled")
    for source in sorted(written):
        path = source.relative_to(root)
        built = list(source.parent.glob(source.stem + ".*.so"))
        if not built:
            if shared:
                problems.append(f"{path} is listed but not compiled")
        elif source.stat().st_mtime > min(p.stat().st_mtime for p in built):
            problems.append(f"{path} changed after it was compiled")
    return problems
