"""Fixtures of the HTTP door's tests: a node serving HTTP with the test snapshot, and an
aiohttp session on it. A test module that needs another node defines its own ``node``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from tests.dataplane.conftest import NodeFactory, envelope, snapshot


@pytest.fixture
async def node(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    node = await start_node(http_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    return node


@pytest.fixture
async def http(node: DataPlaneNode) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://{node.http_address}") as session:
        yield session
