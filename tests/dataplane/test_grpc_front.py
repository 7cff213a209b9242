"""One client address holds at most its share of the node's gRPC door (a counting front
before gRPC where no TLS front counts: ``dataplane.connection_front``), as it does of the
HTTP door; other addresses are served meanwhile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.open_files import connection_caps
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.tls import ServerTls
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.fixtures.certs import TestCA
from tests.helpers import closed_within, connect_from, eventually

ATTACKER = "127.0.0.2"
SHARE = 3


async def _served(address: str) -> bool:
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        reply = await infer_pb2_grpc.InferServiceStub(channel).Infer(chat(), metadata=AUTH, timeout=10)
    return bool(reply.evidence_id)


async def test_one_address_holds_at_most_its_share_of_the_grpc_door(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    # Before: gRPC counted only the door's total (--grpc-max-connections), so one address
    # holding that many connections (idle, or reconnecting in a loop; no API key needed)
    # locked every other caller out of the door.
    node = await start_node(
        grpc_max_connections=16, grpc_max_connections_per_peer=SHARE, metrics_listen="127.0.0.1:0"
    )
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    held = [await connect_from(ATTACKER, node.address) for _ in range(SHARE)]
    try:
        reader, writer = await connect_from(ATTACKER, node.address)
        assert await closed_within(reader, 10)
        writer.close()
        assert not any([await closed_within(r, 0.1) for r, _ in held])  # its share is kept
        assert await _served(node.address)  # another address, with its record
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{node.metrics_address}/metrics") as response,
        ):
            text = await response.text()
        assert 'signalbox_grpc_connections_refused_total{reason="over_peer_limit",worker="0"} 1.0' in text
    finally:
        for _, w in held:
            w.close()

    async def reconnects() -> bool:
        reader, writer = await connect_from(ATTACKER, node.address)
        try:
            return not await closed_within(reader, 0.2)
        finally:
            writer.close()

    await eventually(reconnects, message="the address's places given back")


async def test_with_no_share_the_grpc_door_is_grpcs_own(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node(grpc_max_connections_per_peer=0)
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    held = [await connect_from(ATTACKER, node.address) for _ in range(SHARE + 1)]
    try:
        assert not await closed_within(held[-1][0], 0.2)  # not counted
        assert await _served(node.address)
    finally:
        for _, w in held:
            w.close()


@pytest.mark.parametrize(("share", "cut"), [(SHARE, True), (0, False)], ids=["share", "not counted"])
async def test_the_tls_front_holds_an_address_to_the_same_share(
    start_node: NodeFactory, tmp_path: Path, share: int, cut: bool
) -> None:
    # With a client CA the TLS front counts addresses; it now takes the flag too (it used
    # 1/8 of the door's cap whatever was asked), 0 included (not counted).
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    node = await start_node(
        grpc_max_connections_per_peer=share,
        tls=ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file),
    )
    held = [await connect_from(ATTACKER, node.address) for _ in range(SHARE)]
    try:
        reader, writer = await connect_from(ATTACKER, node.address)
        held.append((reader, writer))
        assert await closed_within(reader, 10 if cut else 0.2) is cut
        assert not await closed_within(held[0][0], 0.1)
    finally:
        for _, w in held:
            w.close()


def test_a_counted_grpc_door_takes_three_descriptors_a_connection() -> None:
    # The caller's socket and the front's to gRPC, and gRPC's end of it; the HTTP door's one.
    caps = connection_caps(1_024, http=None, grpc=None, http_door=True, fronted=False, grpc_fronted=True)
    assert (caps.http, caps.grpc) == ((1_024 - 256) // 4,) * 2
    assert (
        connection_caps(1_024, http=None, grpc=None, http_door=False, fronted=False, grpc_fronted=True).grpc
        == 256
    )
