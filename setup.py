"""What pyproject.toml cannot say: ``migrations/`` ships as ``controlplane.migrations``, the
hot modules listed under ``[tool.signalbox] compiled`` are compiled with mypyc, and those under
``cython`` with Cython.

The Alembic scripts stay at the top of the repository (``alembic`` and developers
find them there), and the wheel carries them inside the package that runs them,
so an installed control plane migrates its database without a source checkout.

mypyc compiles those modules, unchanged Python type-checked by mypy, into C extensions
placed beside their sources (docs in README.md, "Compiled modules"): the per-request work
they do is Python's per-call and per-object overhead more than anything else, which the
compiled form removes. The Cython ones are written for it (typed C over raw buffers), where
a hot loop's work is in the objects it builds, not only in the interpreter's dispatch; each
has a pure-Python twin that runs when it is not built. ``SIGNALBOX_COMPILE=0`` builds pure Python (the same behaviour,
slower), for a site without a C compiler. Everything else about the package is in
pyproject.toml.
"""

import os
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages, setup


def listed(kind: str) -> list[str]:
    """``[tool.signalbox]``'s ``compiled`` (mypyc) or ``cython`` modules."""
    with open(Path(__file__).with_name("pyproject.toml"), "rb") as f:
        return list(tomllib.load(f)["tool"]["signalbox"][kind])


# The setup commands that build extensions. A PEP 517 build runs this file once per hook:
# asked for its requirements (egg_info) and metadata (dist_info) it compiles nothing, so
# mypyc's analysis (~17 s of CPU each time) runs once per wheel instead of three times.
BUILDS = {"build", "build_ext", "bdist_wheel", "bdist", "install", "editable_wheel", "develop"}


def ext_modules() -> list[object]:
    if os.environ.get("SIGNALBOX_COMPILE", "1") == "0" or not BUILDS.intersection(sys.argv[1:]):
        return []
    from Cython.Build import cythonize
    from mypyc.build import mypycify

    # The build environment has mypy but not the runtime dependencies: their types are Any
    # here (calls into them are ordinary Python calls either way). `make typecheck` is where
    # the strict checking happens; this only compiles.
    # Its own cache: `make test` runs this and `mypy` side by side, with other options.
    mypyc = mypycify(
        ["--ignore-missing-imports", "--config-file=", "--cache-dir=build/mypyc-cache", *listed("compiled")],
        opt_level="3",
        group_name="dataplane._native",
    )
    # The generated C stays in build/, out of the source tree.
    return [*mypyc, *cythonize(listed("cython"), build_dir="build/cython", quiet=True)]


setup(
    packages=[
        *find_packages(
            include=["signalbox", "signalbox.*", "controlplane", "controlplane.*", "dataplane", "dataplane.*"]
        ),
        "controlplane.migrations",
        "controlplane.migrations.versions",
    ],
    package_dir={"controlplane.migrations": "migrations"},
    ext_modules=ext_modules(),
)
