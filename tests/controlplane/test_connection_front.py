"""One client address holds at most its share of each control plane port (the front before
each gRPC server, ``dataplane.connection_front``), and calls through the front are still told by
the client's own address."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signalbox.api.config.v1 import identity_pb2, identity_pb2_grpc
from tests.controlplane.conftest import TIMEOUT, enrolled_sync_node
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import closed_within, connect_from, eventually

ATTACKER = "127.0.0.2"
SHARE = 3


async def _health(address: str) -> int:
    local = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=local) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
    return answer.status


async def test_one_address_holds_at_most_its_share_of_each_port_and_others_are_served(
    database_url: str, private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: gRPC counted only a port's total, so one address holding the cap's connections
    # (idle, or reconnecting in a loop) locked every node and admin elsewhere out of it.
    settings = cp_settings(
        database_url,
        private_tmp,
        max_connections=16,
        node_max_connections=16,
        max_connections_per_peer=SHARE,
        node_max_connections_per_peer=SHARE,
        metrics_listen="127.0.0.1:0",
    )
    async with running_control_plane(settings) as running:
        held = []
        try:
            for address in (running.address, running.cp.node_address):
                held += [await connect_from(ATTACKER, address) for _ in range(SHARE)]
                for _ in range(2):  # the second is counted, and not logged again
                    reader, writer = await connect_from(ATTACKER, address)
                    assert await closed_within(reader, TIMEOUT), address
                    writer.close()
            assert not any(reader.at_eof() for reader, _ in held)  # its share is kept
            # Another address is served on both ports meanwhile.
            assert await _health(running.address) == health_pb2.HealthCheckResponse.SERVING
            node = await enrolled_sync_node(running, "elsewhere", private_tmp / "elsewhere")
            try:
                assert node.verified(await node.next_envelope()).version >= 1
            finally:
                await node.close()
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://{running.cp.metrics_address}/metrics") as response,
            ):
                text = await response.text()
            for port in ("admin", "node"):
                line = f'signalbox_controlplane_connections_refused_total{{port="{port}",reason="over_peer_limit"}} 2.0'
                assert line in text
            # The operator is told which address and which flag (nodes behind NAT share one).
            assert [
                r.getMessage() for r in caplog.records if "limit per client address" in r.getMessage()
            ] == [
                f"{port} port: '{ATTACKER}' holds {SHARE} connections, its limit per client address "
                f"({flag}); its next ones are closed. Behind NAT or a load balancer that hides client "
                "addresses, raise it"
                for port, flag in (
                    ("admin", "--max-connections-per-peer"),
                    ("node", "--node-max-connections-per-peer"),
                )
            ]
        finally:
            for _, writer in held:
                writer.close()

        # Their places are given back: the address may connect again.
        async def reconnects() -> bool:
            reader, writer = await connect_from(ATTACKER, running.address)
            try:
                return not await closed_within(reader, 0.2)
            finally:
                writer.close()

        await eventually(reconnects, message="the address's places given back")


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "n1")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _client_ports(port: int) -> set[int]:
    """Local ports of this process's connections to ``port``."""
    return {
        c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port
    }


async def test_a_call_through_the_front_is_told_by_its_clients_own_address(
    control_plane: RunningControlPlane,
) -> None:
    # gRPC sees the front's loopback connection; an enrollment refusal's audit row (and the
    # per-address limit of such rows) must still name the client's own address and port.
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = identity_pb2_grpc.NodeEnrollmentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Enroll(
                identity_pb2.EnrollRequest(token="junk", csr_pem=_csr(), node_id="n1"), timeout=TIMEOUT
            )
        clients = _client_ports(int(control_plane.address.rpartition(":")[2]))
    (detail,) = sql_rows(
        control_plane.database_url,
        "SELECT detail FROM audit_log WHERE detail LIKE 'malformed enrollment token%'",
    )[0]
    assert detail.startswith("malformed enrollment token from ipv4:127.0.0.1:"), detail
    assert int(detail.rpartition(":")[2]) in clients


async def test_with_no_share_set_the_port_is_grpcs_own(database_url: str, private_tmp: Path) -> None:
    settings = cp_settings(
        database_url, private_tmp, max_connections_per_peer=0, node_max_connections_per_peer=0
    )
    async with running_control_plane(settings) as running:
        assert running.cp._fronts == []
        assert await _health(running.address) == health_pb2.HealthCheckResponse.SERVING
        held = [await connect_from(ATTACKER, running.address) for _ in range(SHARE + 1)]
        try:
            assert not await closed_within(held[-1][0], 0.2)  # not counted
        finally:
            for _, writer in held:
                writer.close()
