"""Each port of the control plane holds a bounded number of connections: a flood of idle
ones on the node port (open to anyone, before any certificate is checked) leaves the admin
port, and real nodes once the flood ends, served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.connections import (
    HANDSHAKE_TIMEOUT_MS,
    MAX_CONCURRENT_STREAMS,
    OTHER_FILES,
    connection_caps,
)
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.metrics_http import IDLE_TIMEOUT_S, MAX_PER_PEER
from signalbox.tls import aio_channel
from tests.controlplane.conftest import TIMEOUT, Admin, enrolled_sync_node
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually

CAP = 8


def _held(port: int) -> int:
    """Connections this process (the control plane runs in it) accepted on ``port``."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def test_a_flood_of_idle_connections_on_the_node_port_is_capped(
    database_url: str, private_tmp: Path
) -> None:
    # There was no cap: ~1,000 idle connections (no TLS, not a byte sent) took every
    # descriptor of a control plane at the usual soft limit, and its admin port stopped
    # answering (measured: a health check past its deadline).
    settings = cp_settings(database_url, private_tmp, node_max_connections=CAP)
    async with running_control_plane(settings) as running:
        host, _, port = running.cp.node_address.rpartition(":")
        flood = [await asyncio.open_connection(host, int(port)) for _ in range(5 * CAP)]
        try:
            # Well within HANDSHAKE_TIMEOUT_MS, which closes idle connections too (later).
            await eventually(
                lambda: _held(int(port)) <= CAP,
                timeout=HANDSHAKE_TIMEOUT_MS / 2000,
                message=f"at most {CAP} held",
            )
            async with grpc.aio.insecure_channel(running.address) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=TIMEOUT
                )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for _, writer in flood:
                writer.close()
        await eventually(lambda: _held(int(port)) == 0, message="the flood's connections gone")
        node = await enrolled_sync_node(running, "after-the-flood", private_tmp / "after-the-flood")
        try:
            assert node.verified(await node.next_envelope()).version >= 1
        finally:
            await node.close()


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, (10_000, 10_000)),
        (1024, ((1024 - OTHER_FILES) // 2,) * 2),
        (100, (1, 1)),
        (1_000_000, (10_000, 10_000)),
    ],
)
def test_unset_caps_share_the_open_files_limit(limit: int | None, expected: tuple[int, int]) -> None:
    caps = connection_caps(limit, admin=None, node=None)
    assert (caps.admin, caps.node) == expected
    assert connection_caps(limit, admin=3, node=5) == type(caps)(3, 5)


async def test_one_connection_holds_a_bounded_number_of_streams(control_plane: RunningControlPlane) -> None:
    # There was no cap: one connection held as many concurrent calls as it opened (each a
    # task and buffers on the control plane; measured: 5,000 health watches on one channel,
    # all served). Past the cap a call waits for a stream of its connection to end; other
    # connections are served meanwhile.
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(MAX_CONCURRENT_STREAMS)]
        try:
            for watch in watches:
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            one_more = health.Watch(health_pb2.HealthCheckRequest(), timeout=1.0)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await one_more.read()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # Its own connection (channels to one target share one unless told not to).
            local = [("grpc.use_local_subchannel_pool", 1)]
            async with grpc.aio.insecure_channel(control_plane.address, options=local) as other:
                answer = await health_pb2_grpc.HealthStub(other).Check(
                    health_pb2.HealthCheckRequest(), timeout=TIMEOUT
                )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            # A stream that ends frees its place for the next call.
            watches.pop().cancel()
            again = health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert (await again.read()).status == health_pb2.HealthCheckResponse.SERVING
            again.cancel()
        finally:
            for watch in watches:
                watch.cancel()


async def _admin_port_answers(address: str) -> bool:
    """A health check on a connection of its own answers (False: refused, or no answer in time)."""
    local = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=local) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=0.5
            )
        except grpc.aio.AioRpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_idle_connections_cannot_hold_the_admin_port(database_url: str, private_tmp: Path) -> None:
    # A connection that had finished its handshake was never closed: CAP unauthenticated clients
    # that connected and then said nothing held every slot of the admin port, for good, and
    # admins were locked out. Now a connection with no call in flight is closed when idle.
    settings = cp_settings(database_url, private_tmp, max_connections=CAP, connection_idle_timeout=1.0)
    async with running_control_plane(settings) as running:
        local = [("grpc.use_local_subchannel_pool", 1)]
        holders = [grpc.aio.insecure_channel(running.address, options=local) for _ in range(CAP)]
        try:
            await asyncio.wait_for(asyncio.gather(*(h.channel_ready() for h in holders)), TIMEOUT)
            port = running.address.rpartition(":")[2]
            assert _held(int(port)) == CAP
            await eventually(lambda: _held(int(port)) == 0, message="the idle connections closed")
            assert await _admin_port_answers(running.address)
        finally:
            for holder in holders:
                await holder.close()


async def test_a_node_stream_outlives_the_idle_timeout(database_url: str, private_tmp: Path) -> None:
    # A call in flight is not idleness: a node's config stream stays open past the idle timeout.
    settings = cp_settings(database_url, private_tmp, connection_idle_timeout=0.5)
    async with running_control_plane(settings) as running:
        node = await enrolled_sync_node(running, "long-lived", private_tmp / "long-lived")
        try:
            first = await node.next_envelope()
            node.ack(first, node.verified(first).version)
            port = running.cp.node_address.rpartition(":")[2]
            local = [("grpc.use_local_subchannel_pool", 1)]
            idle = aio_channel(running.cp.node_address, node.tls, local)
            try:
                await asyncio.wait_for(idle.channel_ready(), TIMEOUT)
                assert _held(int(port)) == 2
                # An idle connection on the same port is closed (so the timer ran) ...
                await eventually(lambda: _held(int(port)) == 1, message="the idle connection closed")
            finally:
                await idle.close()
            # ... while the node's stream is still open and served.
            assert not node.ended.is_set()
            async with grpc.aio.insecure_channel(running.address) as channel:
                admin = Admin(admin_pb2_grpc.AdminServiceStub(channel), running.metadata)
                await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="after-idle"))
            assert node.verified(await node.next_envelope()).version == node.verified(first).version + 1
        finally:
            await node.close()


async def test_calls_held_open_cannot_hold_the_admin_port(database_url: str, private_tmp: Path) -> None:
    # A call in flight is not idleness, and needs no credentials on the admin port: CAP clients
    # each holding a health Watch held every slot for good. A connection now ends at its age
    # (its calls given the grace to end), and the port answers again.
    settings = cp_settings(
        database_url, private_tmp, max_connections=CAP, connection_max_age=1.0, connection_age_grace=0.5
    )
    async with running_control_plane(settings) as running:
        local = [("grpc.use_local_subchannel_pool", 1)]
        holders = [grpc.aio.insecure_channel(running.address, options=local) for _ in range(CAP)]
        try:
            watches = [health_pb2_grpc.HealthStub(h).Watch(health_pb2.HealthCheckRequest()) for h in holders]
            for watch in watches:
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            for watch in watches:
                with pytest.raises(grpc.aio.AioRpcError):
                    await asyncio.wait_for(watch.read(), TIMEOUT)
            await eventually(lambda: _admin_port_answers(running.address), message="the admin port answers")
        finally:
            for holder in holders:
                await holder.close()


async def _scraped(address: str, source: str) -> bool:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://{address}/metrics") as response,
    ):
        return response.status == 200 and "signalbox_" in await response.text()


async def test_the_metrics_endpoint_holds_a_bounded_number_of_connections(
    database_url: str, private_tmp: Path
) -> None:
    # aiohttp's defaults held any number of connections that never sent a byte, for an hour:
    # a flood of them on --metrics-listen took the descriptors the ports and the database
    # pool need (measured: 300 idle connections, all held). Now one address holds a few, all
    # addresses a bounded number, and an idle one is closed.
    settings = cp_settings(database_url, private_tmp, metrics_listen="127.0.0.1:0")
    async with running_control_plane(settings) as running:
        address = running.cp.metrics_address
        port = int(address.rpartition(":")[2])
        flood = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5 * MAX_PER_PEER)]
        try:
            await eventually(lambda: _held(port) == MAX_PER_PEER, message=f"{MAX_PER_PEER} held")
            assert await _scraped(address, "127.0.0.2")  # another address is served
            # The flood's connections that were let in are closed once idle.
            await eventually(
                lambda: _held(port) == 0, timeout=IDLE_TIMEOUT_S + 10, message="the idle ones closed"
            )
            assert await _scraped(address, "127.0.0.1")
        finally:
            for _, writer in flood:
                writer.close()
