"""A cap on open connections (``--http-max-connections``), at the HTTP door and at the TLS
front: a flood of idle connections is answered (503, or cut before TLS) instead of taking
the node's file descriptors, the node keeps serving, and the metrics count what was refused.
And the node raises its own soft limit on open files to the hard one."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from dataplane.app import DataPlaneNode
from dataplane.http.server import Limits
from dataplane.tls_front import BACKEND_HOST, OVER_LIMIT, TRUSTED, TlsFront
from signalbox.tls import ServerTls
from tests.dataplane.conftest import API_KEY, NodeFactory, envelope, snapshot
from tests.fixtures.certs import TestCA
from tests.helpers import eventually

HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
HELLO = {"model": "sim-fast", "messages": [{"role": "user", "content": "hello"}]}
CAP = 3


@pytest.fixture
async def node(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    node = await start_node(
        http_listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        http_limits=Limits(max_connections=CAP, keepalive_timeout=60),
    )
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    return node


async def _open(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _metrics(node: DataPlaneNode) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{node.metrics_address}/metrics") as response,
    ):
        text = await response.text()
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name in ("signalbox_http_connections", "signalbox_http_connections_refused_total")
    }


async def test_a_connection_over_the_cap_gets_503_and_the_node_keeps_serving(node: DataPlaneNode) -> None:
    async with AsyncExitStack() as stack:
        idle = []
        for _ in range(CAP):
            reader, writer = await _open(node.http_address)
            stack.callback(writer.close)
            idle.append(writer)

        async def all_held() -> bool:
            return (await _metrics(node))["signalbox_http_connections"] == CAP

        await eventually(all_held, message="the idle connections are open at the door")

        reader, writer = await _open(node.http_address)
        stack.callback(writer.close)
        answer = await asyncio.wait_for(reader.read(), 10)  # answered and closed unasked
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 503 Service Unavailable"
        assert "retry-after: 1" in lines
        assert "connection: close" in lines
        error = json.loads(body)["error"]
        assert "--http-max-connections" in error["message"]
        assert f"{CAP} HTTP connections" in error["message"]

        # One idle caller leaves: the next one is served.
        idle[0].close()

        async def served() -> bool:
            async with (
                aiohttp.ClientSession(f"http://{node.http_address}") as session,
                session.post("/v1/chat/completions", json=HELLO, headers=HEADERS) as response,
            ):
                assert response.status == 200, await response.text()
                return True

        await eventually(served, message="a connection freed is a connection served")
        counted = await _metrics(node)
        assert counted["signalbox_http_connections_refused_total"] >= 1


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[tuple[TlsFront, TestCA]]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    backend = await asyncio.start_server(echo, BACKEND_HOST, 0)
    front = TlsFront(
        ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file),
        "127.0.0.1:0",
        alpn=(b"http/1.1",),
        max_clients=2,
    )
    await front.start("127.0.0.1", 0, backend.sockets[0].getsockname()[1])
    yield front, ca
    await front.close()
    backend.close()
    await backend.wait_closed()


async def test_the_tls_front_cuts_a_client_over_its_cap_before_any_tls(
    front: tuple[TlsFront, TestCA],
) -> None:
    tls_front, ca = front
    address = f"127.0.0.1:{tls_front.port}"
    async with AsyncExitStack() as stack:
        held = []
        for _ in range(2):  # connected, never a byte of TLS: each holds a place
            _, writer = await _open(address)
            stack.callback(writer.close)
            held.append(writer)
        await eventually(lambda: len(tls_front.clients) == 2, message="the front holds both")

        reader, writer = await _open(address)
        stack.callback(writer.close)
        try:
            cut = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            cut = b""
        assert cut == b""
        assert tls_front.results[OVER_LIMIT] == 1

        held[0].close()
        await eventually(lambda: len(tls_front.clients) == 1, message="the front let one go")
        caller = ca.issue("caller", server=False)
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        context.load_cert_chain(caller.cert, caller.key)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", tls_front.port, ssl=context, server_hostname="localhost"
        )
        stack.callback(writer.close)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        assert tls_front.results[TRUSTED] == 1
        assert tls_front.results[OVER_LIMIT] == 1


RAISE = """
import logging, resource, sys
logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
from dataplane.serve_cli import raise_open_files
raise_open_files(int(sys.argv[1]))
print("soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(
    ("hard", "connections", "warned"),
    [(4096, 100, False), (1024, 1000, True)],
    ids=["room-for-the-cap", "hard-limit-short-of-the-cap"],
)
def test_the_node_raises_its_soft_open_files_limit_to_the_hard_one(
    hard: int, connections: int, warned: bool
) -> None:
    _, ceiling = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = min(hard, ceiling)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run(
        [sys.executable, "-c", RAISE, str(connections)],
        preexec_fn=limited,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
        timeout=60,
    ).stdout
    assert f"soft {hard}" in out
    assert ("--http-max-connections" in out) is warned, out
