"""Fixtures shared by the whole suite live in ``tests/fixtures/``, one module per
component, each owned by the part of the tree it serves."""

import os

# A node runs one worker per core by default; the nodes the suite starts run one unless a
# test asks for more (tests/dataplane/test_workers.py checks the default without this).
os.environ.setdefault("SIGNALBOX_WORKERS", "1")

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.upstream",
    "tests.fixtures.keys",
]
