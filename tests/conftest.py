"""Fixtures shared by the whole suite live in ``tests/fixtures/``, one module per
component, each owned by the part of the tree it serves."""

import os

import pytest

from tests import compiled

# A node runs one worker per core by default; the nodes the suite starts run one unless a
# test asks for more (tests/dataplane/test_workers.py checks the default without this).
os.environ.setdefault("SIGNALBOX_WORKERS", "1")

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.upstream",
    "tests.fixtures.keys",
]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run against compiled modules older than their sources: the extension is
    what Python imports, so the suite would test code that is no longer there."""
    problems = compiled.stale()
    if problems:
        pytest.exit(
            "the compiled modules do not match their sources; run `make native` "
            "(or `make clean` for pure Python):\n  " + "\n  ".join(problems),
            returncode=4,
        )
