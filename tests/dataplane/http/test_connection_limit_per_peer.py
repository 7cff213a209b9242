"""One client address holds a bounded share of the HTTP door's connections
(``--http-max-connections-per-peer``): one that opens more is answered 503 while another
address still connects and is served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.http.messages import Limits
from dataplane.open_files import per_peer_cap
from dataplane.tls_front import OVER_LIMIT, OVER_PEER_LIMIT, TRUSTED, TlsFront
from tests.dataplane.conftest import NodeFactory, envelope, snapshot
from tests.dataplane.http.test_connection_limit import (
    HEADERS,
    HELLO,
    _metrics,
    cut,
    echoed,
    refused,
    tls_front,
)
from tests.fixtures.certs import TestCA
from tests.helpers import eventually

CAP = 16
PER_PEER = 4
OTHER = "127.0.0.2"
"""A second loopback address: another client, as far as the node can tell."""


@pytest.fixture
async def node(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    node = await start_node(
        http_listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        http_limits=Limits(max_connections=CAP, max_connections_per_peer=PER_PEER, keepalive_timeout=60),
    )
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    return node


async def _open(address: str, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port), local_addr=(source, 0))


async def _served(address: str, source: str) -> bool:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(f"http://{address}", connector=connector) as session,
        session.post("/v1/chat/completions", json=HELLO, headers=HEADERS) as response,
    ):
        assert response.status == 200, await response.text()
        return True


async def test_one_address_over_its_share_gets_503_and_another_address_is_served(
    node: DataPlaneNode,
) -> None:
    # There was no cap per address: one client that opened --http-max-connections idle
    # connections (or reconnected in a loop) held every place at the door, and every other
    # caller was answered 503 until it stopped.
    async with AsyncExitStack() as stack:
        held = []
        for _ in range(PER_PEER):
            _, writer = await _open(node.http_address)
            stack.callback(writer.close)
            held.append(writer)

        async def all_held() -> bool:
            return (await _metrics(node))["signalbox_http_connections"] == PER_PEER

        await eventually(all_held, message="the first address's connections are open at the door")

        reader, writer = await _open(node.http_address)
        stack.callback(writer.close)
        message = await refused(reader)
        assert "--http-max-connections-per-peer" in message
        assert f"{PER_PEER} HTTP connections" in message

        # Another address holds as many as its own share, and is served.
        for _ in range(PER_PEER - 1):
            _, other = await _open(node.http_address, OTHER)
            stack.callback(other.close)
        assert await _served(node.http_address, OTHER)
        counted = await _metrics(node)
        assert counted["signalbox_http_connections_refused_total"] == 1

        # The first address closes one: its next connection is served.
        held[0].close()
        await eventually(lambda: _served(node.http_address, "127.0.0.1"), message="a place freed is served")


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[tuple[TlsFront, TestCA]]:
    async with tls_front(tmp_path, max_clients=CAP, max_per_peer=2) as made:
        yield made


async def test_the_tls_front_cuts_one_address_over_its_share_while_another_is_served(
    front: tuple[TlsFront, TestCA],
) -> None:
    # Behind the front every connection the door sees is the front's, from loopback: the
    # door cannot tell callers apart, and one address held every place of the front.
    made, ca = front
    address = f"127.0.0.1:{made.port}"
    async with AsyncExitStack() as stack:
        for _ in range(2):  # connected, never a byte of TLS: each holds a place
            _, writer = await _open(address)
            stack.callback(writer.close)
        await eventually(lambda: len(made.clients) == 2, message="the front holds both")

        reader, writer = await _open(address)
        stack.callback(writer.close)
        assert await cut(reader)
        assert made.results[OVER_PEER_LIMIT] == 1
        assert made.results[OVER_LIMIT] == 0

        assert await echoed(ca, made.port, OTHER)
        assert made.results[TRUSTED] == 1


@pytest.mark.parametrize(
    ("max_connections", "expected"), [(10_000, 1_250), (384, 48), (40, 8), (5, 5), (1, 1)]
)
def test_the_default_share_is_an_eighth_of_the_cap_and_at_least_a_few(
    max_connections: int, expected: int
) -> None:
    assert per_peer_cap(max_connections) == expected
    assert Limits(max_connections=max_connections).per_peer == expected
    assert Limits(max_connections=max_connections, max_connections_per_peer=3).per_peer == 3
