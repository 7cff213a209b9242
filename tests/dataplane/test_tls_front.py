"""The TLS front (dataplane/tls_front.py) over real sockets and real TLS: verdicts filed per
connection, bytes relayed both ways with back-pressure, hostile clients dropped, drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from dataplane.auth import INVALID
from dataplane.tls_front import BACKEND_HOST, CERTIFICATE_REQUIRED, NOT_THROUGH_FRONT, Peer, TlsFront
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.tls import ClientTls, ServerTls, aio_channel
from tests.dataplane.conftest import AUTH, GatedUpstream, NodeFactory, chat, envelope, snapshot
from tests.fixtures.certs import Pem, TestCA
from tests.helpers import eventually


@dataclass
class Echo:
    """A plaintext echo server behind the front; notes the front's verdict per connection."""

    front: TlsFront | None = None
    verdicts: list[Peer] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        if first:
            # The verdict is on file before the first byte arrives.
            assert self.front is not None
            host, port = writer.get_extra_info("peername")[:2]
            self.verdicts.append(self.front.peer(host, port))
        data = first
        while data:
            writer.write(data)
            await writer.drain()
            data = await reader.read(65536)
        writer.close()


@dataclass
class Rig:
    front: TlsFront
    echo: Echo
    ca: TestCA
    client: Pem

    def context(self, cert: Pem | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.ca_file))
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        return ctx

    async def connect(self, cert: Pem | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.front.port, ssl=self.context(cert), server_hostname="localhost"
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    echo = Echo()
    echo.server = await asyncio.start_server(echo.serve, BACKEND_HOST, 0)
    front = TlsFront(
        ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file),
        "127.0.0.1:0",
        alpn=(b"http/1.1",),
        handshake_timeout=0.5,
    )
    echo.front = front
    await front.start("127.0.0.1", 0, echo.server.sockets[0].getsockname()[1])
    yield Rig(front, echo, ca, ca.issue("caller", server=False, uris=("spiffe://t/caller",)))
    await front.close()
    echo.server.close()
    await echo.server.wait_closed()


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    async def send() -> None:
        writer.write(data)
        await writer.drain()

    sending = asyncio.create_task(send())
    received = await reader.readexactly(len(data))
    await sending
    return received


async def test_bytes_go_both_ways_and_the_verdict_is_filed_before_the_first(rig: Rig) -> None:
    reader, writer = await rig.connect(rig.client)
    payload = os.urandom(4 * 1024 * 1024)  # many TLS records and socket buffers both ways
    assert await _round_trip(reader, writer, payload) == payload
    assert await _round_trip(reader, writer, b"again") == b"again"
    writer.close()
    (verdict,) = rig.echo.verdicts
    assert verdict.refusal is None
    assert verdict.certificate is not None
    assert verdict.certificate == rig.client.cert.read_bytes()


async def test_untrusted_or_missing_certificates_get_through_the_handshake_with_a_refusal(
    rig: Rig, tmp_path: Path
) -> None:
    stranger = TestCA(tmp_path / "stranger", name=rig.ca.cert.subject.rfc4514_string()[3:])
    for cert in (
        stranger.issue("caller", server=False, uris=("spiffe://t/caller",)),
        stranger.pem,
        rig.ca.issue("old", server=False, expired=True),
        None,
    ):
        reader, writer = await rig.connect(cert)
        assert await _round_trip(reader, writer, b"hello") == b"hello"
        writer.close()
    assert [v.refusal for v in rig.echo.verdicts] == [INVALID, INVALID, INVALID, CERTIFICATE_REQUIRED]
    assert all(v.certificate is None for v in rig.echo.verdicts)


async def test_a_connection_not_opened_by_the_front_has_no_verdict(rig: Rig) -> None:
    reader, writer = await rig.connect(rig.client)
    assert await _round_trip(reader, writer, b"x") == b"x"
    assert rig.front.peer("127.0.0.2", 1) is NOT_THROUGH_FRONT
    assert rig.front.peer(BACKEND_HOST, 1) is NOT_THROUGH_FRONT
    writer.close()
    await writer.wait_closed()
    # Once the connection is gone its port's verdict is withdrawn.
    await eventually(lambda: not rig.front.peers, message="the verdict withdrawn")


async def test_hostile_clients_are_dropped_and_the_front_goes_on(rig: Rig) -> None:
    # Not TLS at all.
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.front.port)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" * 100)
    await writer.drain()
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(65536), 10):
            pass  # an alert, then EOF
    writer.close()
    # Silent after connecting: cut when the handshake's time is up.
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.front.port)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    # A client that leaves mid-handshake.
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.front.port)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    writer.close()
    assert not rig.echo.verdicts  # none of them reached the door
    assert rig.front.results["handshake_failed"] == 1
    assert rig.front.results["handshake_timeout"] == 1
    reader, writer = await rig.connect(rig.client)
    assert await _round_trip(reader, writer, b"still serving") == b"still serving"
    writer.close()


async def test_close_cuts_what_is_still_open_and_stops_accepting(rig: Rig) -> None:
    reader, writer = await rig.connect(rig.client)
    assert await _round_trip(reader, writer, b"open") == b"open"
    await rig.front.close(grace=0.0)
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await rig.connect(rig.client)


async def test_a_node_behind_the_front_drains_an_open_stream_on_stop(
    start_node: NodeFactory, gated_upstream: GatedUpstream, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    node = await start_node(
        drain_seconds=10.0, tls=ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file)
    )
    snap = snapshot(1, gated_upstream.base_url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    caller = ca.issue("caller", server=False)
    tls = ClientTls(ca=ca.ca_file, cert=caller.cert, key=caller.key)
    async with aio_channel(node.address, tls) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        call: Any = stub.InferStream(chat(), metadata=AUTH, timeout=10)
        assert (await call.read()).HasField("start")
        assert (await call.read()).delta.text == "first "
        stopping = asyncio.create_task(node.stop())
        await eventually(lambda: node.stopping, message="the node draining")
        gated_upstream.release.set()
        rest = []
        while (event := await call.read()) is not grpc.aio.EOF:
            rest.append(event)
        assert rest[-1].HasField("end")
        await asyncio.wait_for(stopping, 10)


async def test_the_front_counts_its_connections_by_how_their_handshake_ended(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    node = await start_node(
        metrics_listen="127.0.0.1:0", tls=ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file)
    )
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    caller = ca.issue("caller", server=False)
    stranger = TestCA(tmp_path / "stranger").issue("caller", server=False)
    for tls in (
        ClientTls(ca=ca.ca_file, cert=caller.cert, key=caller.key),
        ClientTls(ca=ca.ca_file, cert=stranger.cert, key=stranger.key),
        ClientTls(ca=ca.ca_file),
    ):
        async with aio_channel(node.address, tls) as channel:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await infer_pb2_grpc.InferServiceStub(channel).Infer(chat(), metadata=AUTH, timeout=10)
    host, port = node.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\n\r\n")  # not TLS
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(reader.read(), 10)
    writer.close()

    async def counted() -> dict[str, float]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{node.metrics_address}/metrics") as response,
        ):
            text = await response.text()
        counts = {
            s.labels["result"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "signalbox_tls_front_connections_total" and s.labels["door"] == "grpc"
        }
        assert counts == {
            "trusted": 1,
            "untrusted": 1,
            "no_certificate": 1,
            "handshake_failed": 1,
            "handshake_timeout": 0,
            "over_limit": 0,
            "over_peer_limit": 0,
        }
        return counts

    await eventually(counted, message="the front's connections counted")


def _exchange(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession | None]:
    """One blocking TLS connection that offers ``session``: (was it resumed, its session)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"  # TLS 1.3 tickets arrive with the first answer
        return tls.session_reused, tls.session


async def test_a_resumed_session_cannot_carry_an_untrusted_certificate_past_the_check(
    rig: Rig, tmp_path: Path
) -> None:
    """OpenSSL runs no verification when a session is resumed: were resumption allowed, a
    client could resume the session of an untrusted certificate and pass as trusted (the
    verify callback never runs). The front resumes no session, in TLS 1.2 or 1.3."""
    stranger = TestCA(tmp_path / "stranger").issue("caller", server=False)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = rig.context(stranger)
        ctx.minimum_version = ctx.maximum_version = version
        reused, session = await asyncio.to_thread(_exchange, rig.front.port, ctx, None)
        assert not reused
        reused, _ = await asyncio.to_thread(_exchange, rig.front.port, ctx, session)
        assert not reused, f"{version.name}: a session was resumed"
    assert [v.refusal for v in rig.echo.verdicts] == [INVALID] * 4
