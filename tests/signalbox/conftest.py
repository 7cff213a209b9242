"""The whole local stack (simulator, control plane with embedded PostgreSQL, one node),
started once per module for tests that call a real node from outside."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from signalbox.shell.up import LocalStack, StackConfig


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A data dir for a whole stack, outside pytest's numbered tmp dirs: a concurrent pytest
    session prunes those (it keeps three), which would delete a running PostgreSQL's files."""
    with tempfile.TemporaryDirectory(prefix="signalbox-test-") as path:
        yield Path(path)


@pytest.fixture(scope="module")
async def local_stack() -> AsyncIterator[LocalStack]:
    """A seeded stack on ephemeral ports; the simulator runs as a child so that tests
    may block the event loop (subprocesses, sync gRPC) without starving it."""
    with tempfile.TemporaryDirectory(prefix="signalbox-test-") as path:
        stack = LocalStack(StackConfig.ephemeral(Path(path), simulator_in_process=False))
        try:
            await stack.start()
            yield stack
        finally:
            await stack.stop()
