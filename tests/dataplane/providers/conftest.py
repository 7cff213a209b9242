"""Fixtures for adapter tests: a fake upstream per test and one shared HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dataplane.upstream import UpstreamClient

from .fakes import FakeUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="session")
async def client() -> AsyncIterator[UpstreamClient]:
    # Shared like the node's pooled client; building one costs ~0.1 s (TLS setup).
    async with UpstreamClient() as http:
        yield http
