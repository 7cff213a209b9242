"""Caps on open connections (``--http-max-connections``, ``--grpc-max-connections``), at
each door and at the TLS front: a flood of idle connections is answered (503, closed, or cut
before TLS) instead of taking the node's file descriptors, the node keeps serving, and the
metrics count what was refused. The caps' defaults follow the open-files limit, which the
node raises to its hard limit (``dataplane.open_files``)."""

from __future__ import annotations

import asyncio
import contextlib
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
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from dataplane.app import DataPlaneNode
from dataplane.http.messages import Limits
from dataplane.open_files import connection_caps
from dataplane.tls_front import BACKEND_HOST, OVER_LIMIT, TRUSTED, TlsFront
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.tls import ServerTls
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, snapshot
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


async def refused(reader: asyncio.StreamReader) -> str:
    """The message of the 503 a connection is answered unasked before it is closed."""
    answer = await asyncio.wait_for(reader.read(), 10)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "retry-after: 1" in lines
    assert "connection: close" in lines
    return str(json.loads(body)["error"]["message"])


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
        message = await refused(reader)
        assert "--http-max-connections" in message
        assert f"{CAP} HTTP connections" in message

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


@contextlib.asynccontextmanager
async def tls_front(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[TlsFront, TestCA]]:
    """A TLS front (``options``: ``TlsFront``'s) before an echo server, and its CA."""

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
        **options,
    )
    await front.start("127.0.0.1", 0, backend.sockets[0].getsockname()[1])
    try:
        yield front, ca
    finally:
        await front.close()
        backend.close()
        await backend.wait_closed()


async def cut(reader: asyncio.StreamReader) -> bool:
    """The connection was closed (or reset) unasked, before a byte came."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


async def echoed(ca: TestCA, port: int, source: str = "127.0.0.1") -> bool:
    """A caller with a certificate of ``ca`` connects from ``source`` and is echoed."""
    caller = ca.issue("caller", server=False)
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    context.load_cert_chain(caller.cert, caller.key)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost", local_addr=(source, 0)
    )
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    finally:
        writer.close()


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[tuple[TlsFront, TestCA]]:
    async with tls_front(tmp_path, max_clients=2) as made:
        yield made


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
        assert await cut(reader)
        assert tls_front.results[OVER_LIMIT] == 1

        held[0].close()
        await eventually(lambda: len(tls_front.clients) == 1, message="the front let one go")
        assert await echoed(ca, tls_front.port)
        assert tls_front.results[TRUSTED] == 1
        assert tls_front.results[OVER_LIMIT] == 1


RAISE = """
import resource, sys
from dataplane.open_files import raise_open_files
print("returned", raise_open_files(), "soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_node_raises_its_soft_open_files_limit_to_the_hard_one() -> None:
    _, ceiling = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = min(4096, ceiling)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run(
        [sys.executable, "-c", RAISE],
        preexec_fn=limited,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
        timeout=60,
    ).stdout
    assert out.split() == ["returned", str(hard), "soft", str(hard)]


@pytest.mark.parametrize(
    ("limit", "given", "http_door", "fronted", "caps"),
    [
        (None, (None, None), True, False, (10_000, 10_000)),
        (1_048_576, (None, None), True, True, (10_000, 10_000)),
        (20_000, (None, None), True, False, (9_872, 9_872)),  # (20,000 - 256) / 2 doors
        (20_000, (None, None), False, False, (10_000, 10_000)),  # the gRPC door alone: at most 10,000
        (1_024, (None, None), True, True, (128, 128)),  # (1,024 - 256) / 2 doors / 3 per fronted connection
        (1_024, (None, None), False, False, (768, 768)),
        (20_000, (500, None), True, False, (500, 9_872)),
        (200, (None, None), True, True, (1, 1)),  # never 0
    ],
)
def test_a_doors_cap_is_a_share_of_the_open_files_limit_unless_given(
    limit: int | None,
    given: tuple[int | None, int | None],
    http_door: bool,
    fronted: bool,
    caps: tuple[int, int],
) -> None:
    got = connection_caps(limit, http=given[0], grpc=given[1], http_door=http_door, fronted=fronted)
    assert (got.http, got.grpc) == caps
    assert got.warning is None


def test_caps_given_beyond_the_limit_are_kept_with_a_warning_naming_them() -> None:
    got = connection_caps(1_024, http=1_000, grpc=None, http_door=True, fronted=False)
    assert (got.http, got.grpc) == (1_000, 384)
    assert got.warning is not None
    assert "limited to 1024" in got.warning
    assert "--http-max-connections 1000" in got.warning
    assert "--grpc-max-connections" not in got.warning  # not given by hand
    both = connection_caps(1_024, http=600, grpc=600, http_door=True, fronted=False)
    assert both.warning is not None
    assert "--http-max-connections 600 and --grpc-max-connections 600" in both.warning
    # An HTTP cap given to a node without an HTTP door needs nothing.
    assert connection_caps(1_024, http=5_000, grpc=None, http_door=False, fronted=False).warning is None


async def test_a_grpc_connection_over_the_cap_is_closed_and_the_node_keeps_serving(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node(grpc_max_connections=2)
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    # Each channel its own connection (channels to one target share them by default).
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]

    async def check(channel: grpc.aio.Channel) -> grpc.StatusCode:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async with AsyncExitStack() as stack:
        channels = []
        for _ in range(3):
            channel = grpc.aio.insecure_channel(node.address, options=options)
            await stack.enter_async_context(channel)
            channels.append(channel)
        assert [await check(c) for c in channels] == [
            grpc.StatusCode.OK,
            grpc.StatusCode.OK,
            grpc.StatusCode.UNAVAILABLE,
        ]
        # The refused channel would take a freed place when it next tries again: closed first.
        await channels[2].close()
        await channels[0].close()

        async def served() -> bool:
            async with grpc.aio.insecure_channel(node.address, options=options) as channel:
                try:
                    reply = await infer_pb2_grpc.InferServiceStub(channel).Infer(
                        chat(), metadata=AUTH, timeout=10
                    )
                except grpc.aio.AioRpcError as exc:
                    # Until the node has seen the closed connection go, the place is taken.
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    return False
                return bool(reply.evidence_id)

        await eventually(served, message="a connection freed is a connection served")


async def _checked(address: str) -> grpc.StatusCode:
    """A health check on a gRPC connection of its own."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_idle_grpc_connections_cannot_hold_the_cap(start_node: NodeFactory) -> None:
    # A gRPC connection that had finished its handshake was never closed: as many clients as
    # --grpc-max-connections that connected and then sent nothing held the door for good.
    node = await start_node(grpc_max_connections=2, grpc_idle_timeout=0.5)
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with AsyncExitStack() as stack:
        for _ in range(2):
            channel = grpc.aio.insecure_channel(node.address, options=options)
            await stack.enter_async_context(channel)
            await asyncio.wait_for(channel.channel_ready(), 10)

        async def served() -> bool:
            return await _checked(node.address) == grpc.StatusCode.OK

        await eventually(served, message="idle connections closed, a new one served")


async def test_one_grpc_connection_holds_a_bounded_number_of_calls(start_node: NodeFactory) -> None:
    # grpc.max_concurrent_streams was unset: one connection held as many calls as it opened.
    node = await start_node(grpc_max_streams=4)
    async with grpc.aio.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(4)]
        try:
            for watch in watches:
                await watch.read()
            one_more = health.Watch(health_pb2.HealthCheckRequest(), timeout=1.0)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await one_more.read()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # Other connections are served meanwhile.
            assert await _checked(node.address) == grpc.StatusCode.OK
        finally:
            for watch in watches:
                watch.cancel()


async def test_grpc_calls_held_open_cannot_hold_the_cap(start_node: NodeFactory) -> None:
    # A call needs no API key to be in flight (a health Watch), and a call in flight is not
    # idleness: clients each holding one held every place under the cap for good. A connection
    # now ends at its age, its calls given the grace to end.
    node = await start_node(grpc_max_connections=2, grpc_max_age=1.0, grpc_age_grace=0.5)
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with AsyncExitStack() as stack:
        watches = []
        for _ in range(2):
            channel = grpc.aio.insecure_channel(node.address, options=options)
            await stack.enter_async_context(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            await watch.read()
            watches.append(watch)
        for watch in watches:
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(watch.read(), 10)

        async def served() -> bool:
            return await _checked(node.address) == grpc.StatusCode.OK

        await eventually(served, message="aged connections closed, a new one served")
