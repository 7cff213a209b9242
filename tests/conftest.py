"""Fixtures shared by the whole suite live in ``tests/fixtures/``, one module per
component, each owned by the part of the tree it serves."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.upstream",
    "tests.fixtures.keys",
]
