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


FIRST = ("tests/packaging/",)
"""Run first: their shared wheel (a mypyc build, ~2 min of one core) then overlaps with
the rest of the run instead of ending it. Under xdist the first tests go to one worker
as one chunk, so the others never wait for the wheel's lock."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = [item for item in items if item.nodeid.startswith(FIRST)]
    if first:
        chosen = {id(item) for item in first}
        items[:] = first + [item for item in items if id(item) not in chosen]
