"""The ControlPlane process: health, trust key, replicas sharing one database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.repositories.config import CONFIG_LOCK
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.controlplane.conftest import TIMEOUT, Admin, enrolled_sync_node
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually


async def test_health_is_serving(control_plane: RunningControlPlane) -> None:
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in (
            "",
            "signalbox.api.admin.v1.AdminService",
            "signalbox.api.config.v1.ConfigSyncService",
        ):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_trust_key_is_the_signing_public_key(control_plane: RunningControlPlane) -> None:
    key = load_pem_public_key((control_plane.data_dir / "trust-key.pub").read_bytes())
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert raw == control_plane.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


async def test_a_second_replica_learns_of_changes_through_postgres(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """A node on replica B receives a change made through replica A (LISTEN/NOTIFY)."""
    # Same KEK source as replica A (its generated file), so both unseal the same signing key.
    settings = cp_settings(control_plane.database_url, private_tmp, kek_file=control_plane.data_dir / "kek")
    async with running_control_plane(settings) as replica:
        assert replica.key_id == control_plane.key_id
        node = await enrolled_sync_node(replica, "on-replica-b", private_tmp / "on-replica-b")
        try:
            first = node.verified(await node.next_envelope())
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="via-a"))
            pushed = node.verified(await node.next_envelope())
            assert pushed.version == first.version + 1
            assert [t.name for t in pushed.tenants] == ["via-a"]
        finally:
            await node.close()


@asynccontextmanager
async def _admin(running: RunningControlPlane) -> AsyncIterator[Admin]:
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Admin(admin_pb2_grpc.AdminServiceStub(channel), running.metadata)


async def test_an_unchanged_config_is_reissued_before_it_expires(
    database_url: str, private_tmp: Path
) -> None:
    settings = cp_settings(
        database_url, private_tmp, snapshot_ttl=timedelta(seconds=0.4), reissue_check_interval=0.05
    )
    async with running_control_plane(settings) as running, _admin(running) as admin:
        first = await admin.latest_version()

        async def reissued() -> bool:
            return await admin.latest_version() > first

        await eventually(reissued, message="a re-issued snapshot")


async def test_connected_nodes_are_seen_while_their_stream_is_open(
    database_url: str, private_tmp: Path
) -> None:
    settings = cp_settings(database_url, private_tmp, node_heartbeat_interval=0.05)
    async with running_control_plane(settings) as running, _admin(running) as admin:
        node = await enrolled_sync_node(running, "quiet", private_tmp / "quiet")
        try:
            await node.next_envelope()

            async def seen_at() -> int:
                (listed,) = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
                return int(listed.last_seen_at.ToNanoseconds())

            first = await eventually(seen_at, message="node listed")

            async def later() -> bool:
                return await seen_at() > first

            await eventually(later, message="last_seen to move without any message from the node")
        finally:
            await node.close()


async def test_stop_drains_an_in_flight_admin_call(admin: Admin, control_plane: RunningControlPlane) -> None:
    """A change waiting on the config lock when stop begins still completes and commits."""
    libpq_url = control_plane.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    async with await psycopg.AsyncConnection.connect(libpq_url, autocommit=True) as blocker:
        await blocker.execute("SELECT pg_advisory_lock(%s)", (CONFIG_LOCK,))
        call = asyncio.ensure_future(admin.CreateTenant(admin_pb2.CreateTenantRequest(name="in-flight")))

        async def waiting_on_lock() -> bool:
            cursor = await blocker.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            row = await cursor.fetchone()
            return row is not None and row[0] > 0

        await eventually(waiting_on_lock, message="the admin call to wait for the config lock")
        stopping = asyncio.ensure_future(control_plane.cp.stop())

        async def refusing_new_calls() -> bool:
            try:
                await admin.ListTenants(admin_pb2.ListTenantsRequest(), timeout=2)
            except grpc.aio.AioRpcError:
                return True
            return False

        # Only once the server is draining: the lock-bound call is then provably in flight.
        await eventually(refusing_new_calls, message="the server to refuse new calls")
        assert not call.done()
        await blocker.execute("SELECT pg_advisory_unlock(%s)", (CONFIG_LOCK,))
        tenant = await asyncio.wait_for(call, TIMEOUT)
        await asyncio.wait_for(stopping, TIMEOUT)
    assert tenant.name == "in-flight"


async def test_stop_closes_a_connection_returned_while_it_stops(
    control_plane: RunningControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """A session still open when stop begins (as one whose call was cancelled closes, in a
    shielded task of its own) is waited for, and its connection closed, not left open in the
    pool the engine replaced (a ResourceWarning once seen in CI)."""
    caplog.set_level(logging.INFO, logger="signalbox.controlplane.db")
    sessions = control_plane.cp._sessions
    assert sessions is not None
    async with sessions() as session:
        await session.execute(sa.text("SELECT 1"))
        raw = (await (await session.connection()).get_raw_connection()).driver_connection
        assert isinstance(raw, psycopg.AsyncConnection)
        stopping = asyncio.ensure_future(control_plane.cp.stop())
        await eventually(
            lambda: "waiting up to" in caplog.text or stopping.done(), message="stop to reach the database"
        )
    await asyncio.wait_for(stopping, TIMEOUT)
    assert raw.closed
    assert "still in use" not in caplog.text


async def test_the_trust_key_file_follows_the_active_key_on_every_replica(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """After a rotation (through replica A), both replicas' trust-key.pub name the new key:
    that file is what operators hand new nodes as --trust-key."""
    settings = cp_settings(control_plane.database_url, private_tmp, kek_file=control_plane.data_dir / "kek")
    async with running_control_plane(settings) as replica:
        rotated = await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())

        def file_key(path: Path) -> bytes:
            key = load_pem_public_key(path.read_bytes())
            return key.public_bytes(Encoding.Raw, PublicFormat.Raw)

        def both_follow() -> bool:
            keys = {file_key(cp.trust_key_path) for cp in (control_plane, replica)}
            return keys == {bytes(rotated.key.ed25519_public_key)}

        await eventually(both_follow, message="both trust-key.pub files to hold the new key")


@pytest.mark.parametrize("port", ["listen", "node_listen"])
async def test_a_second_control_plane_cannot_share_a_running_ones_port(
    control_plane: RunningControlPlane, private_tmp: Path, port: str
) -> None:
    # gRPC binds with SO_REUSEPORT by default: the second one started, and the kernel then
    # spread the admins' (or the nodes') connections over two control planes.
    taken = control_plane.address if port == "listen" else control_plane.cp.node_address
    settings = cp_settings(
        control_plane.database_url, private_tmp, kek_file=control_plane.data_dir / "kek", **{port: taken}
    )
    with pytest.raises(OSError, match=f"cannot listen on {taken}"):
        async with running_control_plane(settings):
            pass
    async with _admin(control_plane) as admin:  # the first one still serves
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="still-served"))
