"""Real upstreams for dispatch tests: simulators speaking the OpenAI wire format on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dataplane.upstream import UpstreamClient
from signalbox.shell.simulator import Simulator

from .support import FakeClock


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[UpstreamClient]:
    # One pooled client, like the node's.
    async with UpstreamClient() as client:
        yield client


@pytest.fixture
async def sim_a() -> AsyncIterator[Simulator]:
    async with Simulator() as sim:
        yield sim


@pytest.fixture
async def sim_b() -> AsyncIterator[Simulator]:
    async with Simulator() as sim:
        yield sim


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
