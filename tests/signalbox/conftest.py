"""The whole local stack (simulator, control plane with embedded PostgreSQL, one node),
started once per module for tests that call a real node from outside."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signalbox.up import LocalStack, StackConfig


@pytest.fixture(scope="module")
async def local_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    """A seeded stack on ephemeral ports; the simulator runs as a child so that tests
    may block the event loop (subprocesses, sync gRPC) without starving it."""
    data_dir: Path = tmp_path_factory.mktemp("stack")
    stack = LocalStack(StackConfig.ephemeral(data_dir, simulator_in_process=False))
    try:
        await stack.start()
        yield stack
    finally:
        await stack.stop()
