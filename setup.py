"""The one thing pyproject.toml cannot say: ``migrations/`` ships as ``controlplane.migrations``.

The Alembic scripts stay at the top of the repository (``alembic`` and developers
find them there), and the wheel carries them inside the package that runs them,
so an installed control plane migrates its database without a source checkout.
Everything else about the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(
            include=["signalbox", "signalbox.*", "controlplane", "controlplane.*", "dataplane", "dataplane.*"]
        ),
        "controlplane.migrations",
        "controlplane.migrations.versions",
    ],
    package_dir={"controlplane.migrations": "migrations"},
)
