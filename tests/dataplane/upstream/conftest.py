"""The upstream client every test here shares the fixture of: a fresh one per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dataplane.upstream import UpstreamClient


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    async with UpstreamClient() as c:
        yield c
